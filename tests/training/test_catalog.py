"""The candidate catalog: every shipped entry is valid, and malformed ones fail with a message that
names the entry and the problem."""

from __future__ import annotations

import pytest
import yaml

from tasks.training.catalog import (
    CONFIG_DIR,
    CandidateSpec,
    CatalogError,
    load_catalog,
    parse_candidate,
    select_candidates,
)


def test_shipped_catalog_covers_every_family_and_method():
    from tasks.families import FAMILIES

    catalog = load_catalog()
    assert {s.family for s in catalog.values()} == set(FAMILIES)
    assert {"lora", "full", "prompt_tuning"} <= {s.method for s in catalog.values()}
    assert catalog["minilm-router-lora"].family == "encoder"
    assert catalog["minilm-router-lora-gpu"].resources.pool_slots == 1
    assert catalog["minilm-router-lora-gpu"].resources.queue == "gpu"
    assert catalog["llama-s-lora"].resources.pool_slots == 1  # a CPU job still takes a slot


def test_deepspeed_configs_are_files_for_every_stage_and_offload():
    import json

    stages = {json.loads(p.read_text())["zero_optimization"]["stage"]: p.name
              for p in CONFIG_DIR.glob("ds_zero*.json")}
    assert set(stages) == {0, 1, 2, 3}
    offload = json.loads((CONFIG_DIR / "ds_zero3_offload.json").read_text())["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == "cpu"
    assert offload["offload_param"]["device"] == "cpu"


def test_family_defaults_for_lora_targets():
    encoder = CandidateSpec(name="e", base_model="m", family="encoder")
    causal = CandidateSpec(name="c", base_model="m")
    assert "classifier" in encoder.hyperparameters.saved_modules("encoder")
    assert "query" in encoder.hyperparameters.lora_targets("encoder")
    assert "q_proj" in causal.hyperparameters.lora_targets("causal_lm")


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "base_model": "m", "learning_rate": 0.1}, r"learning_rate: unknown field"),
    ({"name": "x", "base_model": "m", "hyperparameters": {"lr": 0.1}},
     r"hyperparameters\.lr: unknown field"),
    ({"name": "x", "base_model": "m", "method": "qlora"}, r"method: Input should be 'lora'"),
    ({"name": "x", "base_model": "m", "family": "seq2seq"}, r"family: Input should be"),
    ({"name": "x", "base_model": "m", "deepspeed_config": "ds_zero9.json"},
     r"DeepSpeed config 'ds_zero9\.json' not found.*built-in configs: .*ds_zero2\.json"),
    ({"name": "x", "base_model": "m", "family": "encoder", "method": "prompt_tuning"},
     r"method 'prompt_tuning' is not available for family 'encoder'"),
    ({"name": "x", "base_model": "m", "resources": {"gpus": -1}}, r"resources\.gpus"),
    ({"name": "x", "base_model": "m", "resources": {"gpu": 1}}, r"resources\.gpu: unknown field"),
    ({"name": "bad name!", "base_model": "m"}, r"name: String should match pattern"),
    ({"base_model": "m"}, r"name: Field required"),
    ({"name": "x", "base_model": "m", "hyperparameters": {"batch_size": 0}},
     r"hyperparameters\.batch_size: Input should be greater than or equal to 1"),
])
def test_malformed_candidates_are_rejected_with_a_clear_message(entry, message):
    with pytest.raises(CatalogError, match=message) as caught:
        parse_candidate(entry, "entry #3")
    assert "entry #3" in str(caught.value)


def test_catalog_file_errors_name_the_file_and_entry(tmp_path):
    good = {"name": "a", "base_model": "m"}
    path = tmp_path / "catalog.yaml"

    path.write_text(yaml.safe_dump({"candidates": [good, dict(good)]}))
    with pytest.raises(CatalogError, match="more than once: a"):
        load_catalog(path)

    path.write_text(yaml.safe_dump({"candidates": [good, {"name": "b", "base_model": "m",
                                                          "method": "dpo"}]}))
    with pytest.raises(CatalogError, match=r"catalog\.yaml entry #1 'b' is malformed: method"):
        load_catalog(path)

    path.write_text(yaml.safe_dump({"candidate": [good]}))
    with pytest.raises(CatalogError, match="unknown top-level keys"):
        load_catalog(path)

    path.write_text("candidates: [name: a\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)

    path.write_text(yaml.safe_dump({"candidates": ["just-a-name"]}))
    with pytest.raises(CatalogError, match="expected a mapping"):
        load_catalog(path)


def test_selection_by_name_or_entry_and_its_errors():
    chosen = select_candidates(["llama-s-lora", {"name": "x", "base_model": "some/hub-id",
                                                 "family": "encoder"}])
    assert [c.name for c in chosen] == ["llama-s-lora", "x"]
    assert chosen[1].family == "encoder"
    with pytest.raises(CatalogError, match="unknown candidate 'nope'"):
        select_candidates(["nope"])
    with pytest.raises(CatalogError, match="more than once: llama-s-lora"):
        select_candidates(["llama-s-lora", "llama-s-lora"])
    with pytest.raises(CatalogError, match="selected candidate #0 'y' is malformed"):
        select_candidates([{"name": "y", "base_model": "m", "method": "adapter"}])


def test_candidates_split_by_queue_and_an_unserved_queue_is_refused():
    from tasks.training.catalog import on_queue, select_candidates

    specs = select_candidates(["minilm-router-lora", "minilm-router-lora-gpu"])
    assert [s.name for s in on_queue(specs, "gpu", ["default", "gpu"])] == [
        "minilm-router-lora-gpu"]
    assert [s.name for s in on_queue(specs, "default", ["default", "gpu"])] == [
        "minilm-router-lora"]
    with pytest.raises(CatalogError, match="minilm-router-lora-gpu.*FLYWHEEL_TRAINING_QUEUES"):
        on_queue(specs, "default", ["default"])
