"""Fine-tune one candidate router with LoRA, trained by DeepSpeed under a launcher.

    flywheel finetune --candidate llama-s-lora --dataset-dir ~/.flywheel/datasets/router/v1a2b3c

The training itself runs in :mod:`tasks.train_worker`, started through ``torchrun`` (or the
``deepspeed`` launcher) in a subprocess, so the same stage trains one gloo rank on a CPU in CI and
one rank per GPU, across nodes with a hostfile, in production. This process then logs the run to
MLflow: parameters, the loss curve, tokens/s, the dataset digest and the adapter as an artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.catalog import CandidateSpec, Hyperparameters, load_catalog
from tasks.config import get_paths
from tasks.settings import parse_config


class TrainJob(BaseModel):
    """What the training worker reads: everything resolved to paths."""

    candidate: str
    base_model_path: str
    train_path: str
    output_dir: str
    deepspeed_config: str
    hyperparameters: Hyperparameters
    seed: int = 0
    threads: int = 2


class FinetuneConfig(BaseModel):
    """Settings of one fine-tuning task."""

    candidate: str = Field(description="Candidate name from the catalog.")
    dataset_dir: str = Field(description="Curated dataset version folder (train.jsonl inside).")
    catalog: str | None = Field(None, description="Candidate catalog YAML (default: built-in).")
    spec: CandidateSpec | None = Field(None, description="A whole candidate entry (overrides).")
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    cycle_id: str = Field("manual", min_length=1, description="Cycle (DAG run) this belongs to.")
    output_dir: str | None = Field(None, description="Where the adapter goes (default: runs/).")
    launcher: Literal["torchrun", "deepspeed", "none"] = Field(
        "torchrun", description="How the worker starts: torchrun, deepspeed, or in-process.")
    nproc: int = Field(1, ge=1, le=1024, description="Processes (devices) per node.")
    threads: int = Field(2, ge=1, le=256, description="CPU threads per process.")
    seed: int = Field(0, ge=0, description="Seed for LoRA init and data order.")
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")
    track: bool = Field(True, description="Log the run to MLflow.")


class FinetuneResult(BaseModel):
    candidate: str
    base_model: str
    base_model_path: str
    adapter_dir: str
    dataset_version: str
    dataset_digest: str
    steps: int
    first_loss: float
    final_loss: float
    train_seconds: float
    tokens_per_second: float
    trainable_parameters: int
    total_parameters: int
    mlflow_run_id: str | None = None


def launch_command(job_path: Path, launcher: str, nproc: int) -> list[str]:
    """The command that starts the worker: one process per device under the chosen launcher."""
    module = ["-m", "tasks.train_worker", str(job_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(nproc), *module]
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
                "--module", "tasks.train_worker", str(job_path)]
    # in-process rank: the distributed variables DeepSpeed needs for a single process
    return [sys.executable, *module]


def _single_rank_env() -> dict[str, str]:
    port = 29500 + os.getpid() % 2000
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
            "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train ``config.candidate`` on the dataset's train split; log and return what it made."""
    from tasks.basemodels import resolve_base_model

    paths = get_paths(config.home)
    spec = config.spec or load_catalog(config.catalog).get(config.candidate)
    if spec is None:
        raise ValueError(f"unknown candidate {config.candidate!r}")
    dataset_dir = Path(config.dataset_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    train_path = dataset_dir / "train.jsonl"
    if not train_path.is_file():
        raise FileNotFoundError(f"no train split at {train_path}")

    base_path = str(resolve_base_model(spec.base_model, home=paths.home))
    out = Path(config.output_dir or paths.runs / config.cycle_id / "candidates" / spec.name)
    if out.exists():  # a retried task starts clean (resume from checkpoints comes later)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    job = TrainJob(candidate=spec.name, base_model_path=base_path, train_path=str(train_path),
                   output_dir=str(out), deepspeed_config=str(spec.deepspeed_config_path()),
                   hyperparameters=spec.hyperparameters, seed=config.seed, threads=config.threads)
    job_path = out / "job.json"
    job_path.write_text(job.model_dump_json(indent=1))

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(config.threads),
           # DeepSpeed compiles its CPU ops on first use (~1 min); cache them per environment
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR")
           or str(Path(sys.prefix) / "var" / "torch_extensions")}
    if config.launcher == "none":
        env.update(_single_rank_env())
    if config.launcher != "deepspeed":  # one node: keep gloo's sockets on loopback
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = launch_command(job_path, config.launcher, config.nproc)
    print("launch:", " ".join(command), flush=True)
    completed = subprocess.run(command, env=env, cwd=out)
    if completed.returncode != 0:
        raise RuntimeError(f"training {spec.name} failed (exit {completed.returncode}); "
                           f"the worker's output is above, its job file is {job_path}")
    metrics = json.loads((out / "train_metrics.json").read_text())

    result = FinetuneResult(
        candidate=spec.name, base_model=spec.base_model, base_model_path=base_path,
        adapter_dir=str(out / "adapter"), dataset_version=manifest["version"],
        dataset_digest=manifest["digest"], steps=metrics["steps"],
        first_loss=metrics["first_loss"], final_loss=metrics["final_loss"],
        train_seconds=metrics["train_seconds"], tokens_per_second=metrics["tokens_per_second"],
        trainable_parameters=metrics["trainable_parameters"],
        total_parameters=metrics["total_parameters"])
    if config.track:
        result.mlflow_run_id = _log_to_mlflow(config, spec, result, metrics, out)
    (out / "finetune_result.json").write_text(result.model_dump_json(indent=1))
    return result


def _log_to_mlflow(config: FinetuneConfig, spec: CandidateSpec, result: FinetuneResult,
                   metrics: dict, out: Path) -> str:
    from tasks import tracking

    tags = {"flywheel.cycle_id": config.cycle_id, "flywheel.candidate": spec.name,
            "flywheel.stage": "finetune", "flywheel.base_model": spec.base_model,
            "flywheel.dataset_version": result.dataset_version}
    with tracking.run(config.workload_id, run_name=f"{config.cycle_id}/{spec.name}", tags=tags,
                      paths=get_paths(config.home)) as active:
        import mlflow

        mlflow.log_params({"candidate": spec.name, "base_model": spec.base_model,
                           "method": spec.method, "deepspeed_config": spec.deepspeed_config,
                           "zero_stage": metrics["zero_stage"], "world_size": metrics["world_size"],
                           "dataset_version": result.dataset_version,
                           "dataset_digest": result.dataset_digest,
                           **{f"hp.{k}": v for k, v in spec.hyperparameters.model_dump().items()}})
        for step, loss in enumerate(metrics["losses"], start=1):
            mlflow.log_metric("train_loss", loss, step=step)
        mlflow.log_metrics({k: float(metrics[k]) for k in (
            "train_seconds", "tokens_per_second", "peak_rss_mb", "trainable_parameters",
            "total_parameters", "final_loss")})
        mlflow.log_artifacts(str(out / "adapter"), artifact_path="adapter")
        mlflow.log_artifact(str(out / "train_metrics.json"))
        return active.info.run_id


def main(argv: list[str] | None = None) -> int:
    config = parse_config(FinetuneConfig, argv, "flywheel finetune", __doc__)
    result = finetune(config)
    print(f"{result.candidate}: loss {result.first_loss:.3f} -> {result.final_loss:.3f} "
          f"in {result.steps} steps, {result.train_seconds:.1f}s "
          f"({result.tokens_per_second:.0f} tokens/s); adapter at {result.adapter_dir}")
    return 0
