"""Training tests on the tiny base model: DeepSpeed under torchrun really trains the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.catalog import CandidateSpec, Hyperparameters, load_catalog, select_candidates
from tasks.finetune import FinetuneConfig, finetune, launch_command


def write_dataset(folder: Path, n_train: int = 96, n_test: int = 33) -> Path:
    """A small curated-dataset folder from CLINC150's train split (the stage's input contract)."""
    import random

    from tasks.clinc150 import examples

    pool = [e for e in examples() if e.split == "train"]
    random.Random(0).shuffle(pool)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", pool[:n_train]), ("test", pool[n_train:n_train + n_test])):
        (folder / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{i}", "query": e.query, "expert": e.expert}) + "\n"
            for i, e in enumerate(rows)))
    (folder / "manifest.json").write_text(json.dumps({"version": "vtest", "digest": "0" * 64}))
    return folder


def test_catalog_resolves_names_and_entries():
    catalog = load_catalog()
    assert {"llama-s-lora", "llama-m-lora"} <= set(catalog)
    chosen = select_candidates(["llama-s-lora", {"name": "x", "base_model": "some/hub-id"}])
    assert [c.name for c in chosen] == ["llama-s-lora", "x"]
    assert chosen[0].deepspeed_config_path().name == "ds_zero2.json"
    with pytest.raises(ValueError, match="unknown candidate"):
        select_candidates(["nope"])


def test_launch_command_uses_a_launcher(tmp_path):
    command = launch_command(tmp_path / "job.json", "torchrun", 4)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node" in command and "4" in command
    assert command[-3:] == ["-m", "tasks.train_worker", str(tmp_path / "job.json")] or \
        command[-2:] == ["tasks.train_worker", str(tmp_path / "job.json")]


@pytest.mark.slow
def test_lora_training_through_deepspeed_lowers_loss_and_changes_weights(tmp_path, xs_base_model):
    from safetensors.torch import load_file

    from tasks import tracking

    dataset = write_dataset(tmp_path / "dataset")
    spec = CandidateSpec(name="xs-lora", base_model=str(xs_base_model),
                         hyperparameters=Hyperparameters(learning_rate=2e-2, batch_size=16,
                                                         epochs=40, max_steps=40))
    result = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                     home=str(tmp_path), cycle_id="t1"))

    assert result.steps == 40
    assert result.final_loss < 0.9 * result.first_loss, (result.first_loss, result.final_loss)
    weights = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b, "adapter has no LoRA B matrices"
    # LoRA starts B at zero: any non-zero B means training moved the adapter
    assert any(float(w.abs().max()) > 0 for w in lora_b)
    assert (Path(result.adapter_dir) / "adapter_config.json").is_file()

    mlflow = tracking.configure(tracking.get_paths(str(tmp_path)))
    run = mlflow.MlflowClient().get_run(result.mlflow_run_id)
    assert run.data.params["dataset_digest"] == "0" * 64
    assert run.data.params["zero_stage"] == "2"
    history = mlflow.MlflowClient().get_metric_history(result.mlflow_run_id, "train_loss")
    assert len(history) == 40
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.mlflow_run_id,
                                                                      "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts
