"""A training job killed with SIGKILL and started again (as an Airflow retry would) resumes from its
last DeepSpeed checkpoint, sees the batches it had not seen yet, and stops at the planned step."""

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

from tests.test_finetune import write_dataset

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
    from torch.utils.data import DistributedSampler

    from tasks import tracking
    from tasks.finetune import FinetuneConfig, finetune
    from tasks.train_worker import batch_digest

    dataset = write_dataset(tmp_path / "dataset", n_train=64)
    settings = {
        "candidate": "xs-resume", "dataset_dir": str(dataset), "home": str(tmp_path),
        "cycle_id": "retry", "spec": {
            "name": "xs-resume", "base_model": str(xs_base_model),
            "hyperparameters": {"learning_rate": 0.02, "batch_size": 8, "epochs": 100,
                                "max_steps": PLANNED, "checkpoint_every": 4, "log_every": 2}}}
    config_file = tmp_path / "finetune.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    out = tmp_path / "runs" / "retry" / "candidates" / "xs-resume"

    # first attempt: the stage's command line in its own process group, killed once it has
    # written a checkpoint (SIGKILL: no handler runs, as when a worker node is lost)
    first = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tasks.finetune import main; "
         "sys.exit(main(sys.argv[1:]))", "--config", str(config_file)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "latest").is_file():
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

    checkpointed = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
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

    # data order: exactly the batches an uninterrupted run draws (seeded shuffle per epoch)
    expected = []
    epoch = 0
    while len(expected) < PLANNED:
        sampler = DistributedSampler(range(64), num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        order = list(sampler)
        expected += [batch_digest(order[i:i + 8]) for i in range(0, len(order), 8)]
        epoch += 1
    assert metrics["batch_digests"] == expected[:PLANNED]

    history = client.get_metric_history(run_id, "train_loss")
    assert {m.step for m in history} == set(range(1, PLANNED + 1))
    assert not (out / "checkpoints").exists(), "checkpoints are removed once the weights exist"
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
