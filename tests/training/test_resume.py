"""A training job killed with SIGKILL and started again (as an Airflow retry would) resumes from its
last complete checkpoint, sees the batches it had not seen yet, and stops at the planned step with
what an uninterrupted run of the same job makes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.training.test_finetune import write_dataset

PLANNED = 40


def _processes_with(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (this test's own job path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_last_checkpoint(tmp_path, xs_base_model):
    from safetensors.torch import load_file

    from tasks.core import tracking
    from tasks.training.finetune import FinetuneConfig, finetune
    from tasks.training.worker import latest_checkpoint

    dataset = write_dataset(tmp_path / "dataset", n_train=64)
    settings = {
        "candidate": "xs-resume", "dataset_dir": str(dataset), "home": str(tmp_path),
        "cycle_id": "retry", "spec": {
            "name": "xs-resume", "base_model": str(xs_base_model),
            "hyperparameters": {"learning_rate": 0.02, "batch_size": 8, "epochs": 100,
                                "max_steps": PLANNED, "checkpoint_every": 4, "log_every": 2,
                                "max_seq_len": 128}}}
    config_file = tmp_path / "finetune.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    out = tmp_path / "runs" / "retry" / "candidates" / "xs-resume"

    # first attempt: the stage's command line in its own process group, killed once it has
    # written a checkpoint (SIGKILL: no handler runs, as when a worker node is lost)
    first = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tasks.training.finetune import main; "
         "sys.exit(main(sys.argv[1:]))", "--config", str(config_file)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(out / "checkpoints") is None:
            assert first.poll() is None, "the first attempt ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the group of the process this test started
        first.wait(timeout=30)
    assert not (out / "train_metrics.json").exists(), "the first attempt finished before the kill"
    # the orphaned worker must die with its launcher (else it would train beside the retry)
    deadline = time.monotonic() + 15
    while _processes_with(str(out / "job.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(str(out / "job.json")), "a training process outlived the kill"

    checkpointed = int(latest_checkpoint(out / "checkpoints").name.removeprefix("checkpoint-"))
    assert 0 < checkpointed < PLANNED
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    mlflow = tracking.configure(tracking.get_paths(str(tmp_path)))
    client = mlflow.MlflowClient()
    live = client.get_metric_history(run_id, "train_loss")
    assert live, "the worker logged no loss to MLflow while it ran"

    # the retry: same task, same settings
    result = finetune(FinetuneConfig.model_validate(settings))
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert result.resumed_from_step == checkpointed
    assert result.steps == result.planned_steps == PLANNED
    assert len(metrics["losses"]) == PLANNED
    assert [a["from_step"] for a in metrics["attempts"]] == [0, checkpointed]
    assert result.mlflow_run_id == run_id  # the retry continues the same MLflow run

    history = client.get_metric_history(run_id, "train_loss")
    assert {m.step for m in history} == set(range(1, PLANNED + 1))
    assert not (out / "checkpoints").exists(), "checkpoints are removed once the weights exist"
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()

    # the same job never interrupted: the same batches in the same order, the same curve and
    # the same weights (optimizer, schedule and RNG states all came back from the checkpoint)
    whole = finetune(FinetuneConfig.model_validate(
        {**settings, "cycle_id": "uninterrupted", "track": False}))
    reference = json.loads((Path(whole.adapter_dir).parent / "train_metrics.json").read_text())
    assert metrics["batch_digests"] == reference["batch_digests"]
    assert metrics["losses"] == pytest.approx(reference["losses"], rel=1e-4, abs=1e-5)
    resumed = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    straight = load_file(Path(whole.adapter_dir) / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for name, tensor in resumed.items():
        assert (tensor - straight[name]).abs().max() < 1e-4, name
