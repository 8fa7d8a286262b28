"""Tests of tasks.demo.basemodels on the xs recipe (seconds): build, cache, load, tokenise,
resolve."""

from __future__ import annotations

import json
import os
import time

import pytest

from tasks.demo import basemodels
from tasks.demo.basemodels import RECIPES, ensure_base_model, ensure_tokenizer
from tasks.demo.clinc150 import EXPERTS
from tasks.training.bases import resolve_base_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

XS = "flywheel-llama-xs"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("flywheel-home")


@pytest.fixture(scope="module")
def built(home):
    """The xs model, built once for the module; the build time is part of what is tested."""
    started = time.perf_counter()
    folder = ensure_base_model(XS, home, progress=False)
    return folder, time.perf_counter() - started


def test_xs_builds_fast_and_loss_falls(built):
    folder, seconds = built
    assert seconds < 30, f"xs build took {seconds:.1f} s; tests need it under 30 s"
    metrics = json.loads((folder / "pretrain_metrics.json").read_text())
    assert metrics["final_loss"] < metrics["initial_loss"] - 1.0
    assert metrics["steps"] == RECIPES[XS].pretrain_steps
    assert metrics["params"] < 500_000


def test_folder_holds_model_tokenizer_recipe_metrics(built, home):
    folder, _ = built
    assert folder.parent == home.resolve() / "models" / "base"
    assert folder.name.startswith(f"{XS}-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "recipe.json", "pretrain_metrics.json", "README.md"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "recipe.json").read_text()) == RECIPES[XS].model_dump(mode="json")
    assert "tiny" in (folder / "README.md").read_text()
    assert not list(folder.parent.glob(".*.tmp-*")), "temporary build folder left behind"


def test_loads_with_auto_classes_and_generates(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = built
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token == "<pad>" and tokenizer.unk_token == "<unk>"
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    inputs = tokenizer("how do i set up direct deposit", return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out[0], skip_special_tokens=True), str)


def test_expert_names_tokenise_into_few_tokens(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built[0])
    for name in EXPERTS:
        for text in (name, f" {name}"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(ids) <= 4, (text, tokenizer.convert_ids_to_tokens(ids))
            assert tokenizer.decode(ids) == text


def test_full_size_tokenizer_keeps_expert_names_short(home):
    """The s/m tokenizer (trained in seconds, no model built) keeps each name to <= 2 tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tokenizer("flywheel-llama-s", home))
    assert len(tokenizer) == RECIPES["flywheel-llama-s"].vocab_size
    for name in EXPERTS:
        assert len(tokenizer(f" {name}", add_special_tokens=False)["input_ids"]) <= 2, name


def test_corpus_has_no_val_or_test_queries():
    from tasks.demo.clinc150 import examples

    lines = set(basemodels.corpus_lines(RECIPES["flywheel-llama-s"]))
    held_out = {e.query.lower() for e in examples() if e.split != "train"}
    train = {e.query.lower() for e in examples() if e.split == "train"} - held_out
    assert train <= lines
    assert not held_out & lines, "a val/test query is in the pre-training corpus"


def test_cache_hit_returns_same_folder_without_rebuilding(built, home, monkeypatch):
    folder, _ = built
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(basemodels, "_build", fail)
    started = time.perf_counter()
    assert ensure_base_model(XS, home) == folder
    assert time.perf_counter() - started < 5
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_changed_recipe_builds_a_new_folder(built, home):
    folder, _ = built
    changed = RECIPES[XS].model_copy(update={"pretrain_steps": 5, "warmup_steps": 1, "seed": 1})
    other = ensure_base_model(changed, home, progress=False)
    assert other != folder and other.name.startswith(f"{XS}-")
    assert json.loads((other / "recipe.json").read_text())["seed"] == 1
    # Same tokenizer settings: the tokenizer is shared, not retrained.
    assert len(list((home / "models" / "tokenizers").glob("bpe1024-*"))) == 1


def test_resolve_base_model(built, home, tmp_path):
    folder, _ = built
    assert resolve_base_model(XS, home) == folder
    assert resolve_base_model(str(folder)) == folder
    assert resolve_base_model(str(tmp_path)) == tmp_path.resolve()
    hub_id = "meta-llama/Llama-3.2-1B-Instruct"
    assert resolve_base_model(hub_id, home) == hub_id


def test_recipe_validation():
    with pytest.raises(ValueError):
        RECIPES[XS].model_validate({**RECIPES[XS].model_dump(), "num_attention_heads": 5})
    with pytest.raises(KeyError):
        ensure_base_model("no-such-recipe")


def test_cli_prints_table(built, home, capsys):
    folder, _ = built
    assert basemodels.main(["--models", XS, "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert XS in out and str(folder) in out and "(cached)" in out
