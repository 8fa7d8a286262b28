"""Fine-tune one candidate router: transformers' Trainer on DeepSpeed under a launcher, in MLflow.

    flywheel finetune --candidate llama-s-lora --dataset-dir ~/.flywheel/datasets/router/v1a2b3c
    flywheel finetune --candidate minilm-router-lora --dataset-dir ...

The training itself runs in :mod:`tasks.training.worker`, started through ``torchrun`` (or the
``deepspeed`` launcher) in a subprocess, so the same stage trains one gloo rank on a CPU in CI and
one rank per GPU, across nodes with a hostfile, in production.

This process opens the MLflow run first (parameters, base model, dataset digest) and hands its id to
the worker, whose rank 0 logs the loss curve into it while training; when the worker is done this
process adds the summary (tokens/s, peak memory, wall time) and the weights as artifacts.

A retried task resumes: the output folder is kept when it holds a checkpoint of the same job (same
candidate settings, data and seed), and the worker continues from it, in the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.config import get_paths
from tasks.core.settings import parse_config
from tasks.core.workload import manifest_experts
from tasks.training.catalog import CandidateSpec, CatalogError, load_catalog
from tasks.training.scope_guard import build_for_training_set
from tasks.training.worker import CHECKPOINT_DIR, TrainJob, die_with_parent, latest_checkpoint

#: The Airflow pool that limits concurrent training jobs (one slot per GPU a job needs).
TRAINING_POOL = "flywheel_gpu"


class FinetuneConfig(BaseModel):
    """Settings of one fine-tuning task."""

    candidate: str = Field(description="Candidate name from the catalog.")
    dataset_dir: str = Field(description="Curated dataset version folder (train.jsonl inside).")
    catalog: str | None = Field(None, description="Candidate catalog YAML (default: built-in).")
    spec: CandidateSpec | None = Field(None, description="A whole candidate entry (overrides).")
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    cycle_id: str = Field("manual", min_length=1, description="Cycle (DAG run) this belongs to.")
    output_dir: str | None = Field(None, description="Where the weights go (default: runs/).")
    launcher: Literal["torchrun", "deepspeed", "none"] = Field(
        "torchrun", description="How the worker starts: torchrun, deepspeed, or in-process.")
    nproc: int | None = Field(None, ge=1, le=1024, description=(
        "Processes (devices) per node; default: the candidate's GPUs on a GPU host, else 1."))
    threads: int = Field(2, ge=1, le=256, description="CPU threads per process.")
    seed: int = Field(0, ge=0, description="Seed for new weights and data order.")
    resume: bool = Field(True, description=(
        "Continue from the output folder's checkpoint of the same job (a retry) instead of "
        "starting over."))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")
    track: bool = Field(True, description="Log the run to MLflow (live loss curve included).")


class FinetuneResult(BaseModel):
    candidate: str
    family: str = "causal_lm"
    method: str = "lora"
    base_model: str
    base_model_path: str
    adapter_dir: str = Field(description=(
        "The trained weights: a peft adapter folder, or the whole model for method full."))
    artifact_path: str = Field("adapter", description="Where the weights are in the MLflow run.")
    dataset_version: str
    dataset_digest: str
    steps: int
    planned_steps: int = 0
    resumed_from_step: int = 0
    first_loss: float
    final_loss: float
    train_seconds: float
    tokens_per_second: float
    peak_memory_mb: float = 0.0
    trainable_parameters: int
    total_parameters: int
    mlflow_run_id: str | None = None
    scope_guard: dict | None = Field(None, description=(
        "The out-of-scope guard saved beside the weights (tasks/training/scope_guard.py): "
        "reference queries, threshold, budget; none when the candidate has no guard."))


def launch_command(job_path: Path, launcher: str, nproc: int) -> list[str]:
    """The command that starts the worker: one process per device under the chosen launcher."""
    module = ["-m", "tasks.training.worker", str(job_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(nproc), *module]
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
                "--module", "tasks.training.worker", str(job_path)]
    # in-process rank: the distributed variables DeepSpeed needs for a single process
    return [sys.executable, *module]


def _single_rank_env() -> dict[str, str]:
    port = 29500 + os.getpid() % 2000
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
            "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


def resolve_base(spec: CandidateSpec, home: str | os.PathLike[str] | None) -> str:
    """The base model folder (or hub id) of a candidate, for its family."""
    if spec.family in ("encoder", "linear_probe"):  # a sentence encoder
        from tasks.evaluation.encoder_router import resolve_encoder

        return str(resolve_encoder(spec.base_model))
    from tasks.training.bases import resolve_base_model

    return str(resolve_base_model(spec.base_model, home=home))


def check_base_models(specs: list[CandidateSpec], home: str | Path | None = None
                      ) -> dict[str, str]:
    """Resolve every candidate's base model and read its config, before any training starts.

    A packaged model is converted (once) and a built-in recipe built (once) here; a local folder
    must hold a config transformers can load. A hub id cannot be checked offline and is passed
    through for the training worker to download.

    Returns:
        ``{candidate: base model folder or hub id}``.

    Raises:
        CatalogError: naming the candidate and the reason (missing or damaged model file, an
            architecture transformers cannot load).
    """
    resolved: dict[str, str] = {}
    for spec in specs:
        try:
            path = resolve_base(spec, home)
            if Path(path).is_dir():
                from transformers import AutoConfig

                AutoConfig.from_pretrained(path)
                if not any(Path(path).glob("*.safetensors")) and not any(
                        Path(path).glob("*.bin")):
                    raise ValueError(f"{path} holds no weights (*.safetensors or *.bin)")
        except Exception as exc:  # noqa: BLE001 - one clear message per candidate
            raise CatalogError(f"candidate {spec.name!r}: base model {spec.base_model!r} cannot "
                               f"be used: {exc}") from exc
        resolved[spec.name] = path
    return resolved


def job_fingerprint(spec: CandidateSpec, train_path: Path, base_model_path: str, seed: int,
                    nproc: int) -> str:
    """What must match for a retry to continue a checkpoint: settings, data, base, seed, ranks."""
    digest = hashlib.sha256()
    digest.update(spec.model_dump_json(exclude={"resources"}).encode())
    digest.update(hashlib.sha256(train_path.read_bytes()).digest())
    digest.update(f"{base_model_path}|{seed}|{nproc}".encode())
    return digest.hexdigest()


def _previous_attempt(out: Path, fingerprint: str) -> str:
    """``"done"``, ``"resumable"`` or ``"none"``: what an earlier attempt of this job left."""
    job_file = out / "job.json"
    if not job_file.is_file():
        return "none"
    try:
        previous = json.loads(job_file.read_text()).get("fingerprint")
    except json.JSONDecodeError:
        return "none"
    if previous != fingerprint:
        return "none"
    if (out / "train_metrics.json").is_file():
        return "done"
    if latest_checkpoint(out / CHECKPOINT_DIR) is not None:
        return "resumable"
    return "none"


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train ``config.candidate`` on the dataset's train split; log and return what it made."""
    import torch

    paths = get_paths(config.home)
    spec = config.spec or load_catalog(config.catalog).get(config.candidate)
    if spec is None:
        raise ValueError(f"unknown candidate {config.candidate!r}")
    dataset_dir = Path(config.dataset_dir)
    manifest_path = dataset_dir / "manifest.json"
    train_path = dataset_dir / "train.jsonl"
    for required in (manifest_path, train_path):
        if not required.is_file():
            raise FileNotFoundError(f"dataset folder {dataset_dir} has no {required.name}")
    manifest = json.loads(manifest_path.read_text())
    experts, fallback = manifest_experts(manifest)

    base_path = resolve_base(spec, paths.home)
    nproc = config.nproc or (max(1, spec.resources.gpus) if torch.cuda.is_available() else 1)
    fingerprint = job_fingerprint(spec, train_path, base_path, config.seed, nproc)
    out = Path(config.output_dir or paths.runs / config.cycle_id / "candidates" / spec.name)
    previous = _previous_attempt(out, fingerprint) if config.resume else "none"
    if previous == "none":
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{spec.name}: " + {"none": "training from the start",
                              "resumable": "resuming from the checkpoint of an earlier attempt",
                              "done": "already trained by an earlier attempt"}[previous],
          flush=True)

    job = TrainJob(candidate=spec.name, family=spec.family, method=spec.method,
                   base_model=spec.base_model, base_model_path=base_path,
                   train_path=str(train_path.resolve()), dataset_digest=manifest["digest"],
                   labels=experts, fallback_expert=fallback,
                   system_prompt=manifest.get("system_prompt"),
                   output_dir=str(out.resolve()),
                   deepspeed_config=str(spec.deepspeed_config_path()),
                   hyperparameters=spec.hyperparameters, seed=config.seed,
                   threads=config.threads, fingerprint=fingerprint)
    run_file = out / "mlflow_run.json"
    if config.track:
        run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        with _tracked_run(config, spec, manifest, run_id) as (active, tracking_uri):
            run_file.write_text(json.dumps({"run_id": active.info.run_id}))
            job.tracking_uri, job.mlflow_run_id = tracking_uri, active.info.run_id
            if previous != "done":
                _launch(job, out, config, nproc)
            result = _result(spec, job, manifest, out, active.info.run_id)
            result.scope_guard = build_for_training_set(train_path, spec.scope_guard_budget,
                                                        result.adapter_dir, fallback)
            _log_summary(result, json.loads((out / "train_metrics.json").read_text()), out,
                         spec)
    else:
        if previous != "done":
            _launch(job, out, config, nproc)
        result = _result(spec, job, manifest, out, None)
        result.scope_guard = build_for_training_set(train_path, spec.scope_guard_budget,
                                                    result.adapter_dir, fallback)
    (out / "finetune_result.json").write_text(result.model_dump_json(indent=1))
    return result


def _launch(job: TrainJob, out: Path, config: FinetuneConfig, nproc: int) -> None:
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
    command = launch_command(job_path, config.launcher, nproc)
    print("launch:", " ".join(command), flush=True)
    completed = subprocess.run(command, env=env, cwd=out, preexec_fn=die_with_parent)
    if completed.returncode != 0:
        raise RuntimeError(f"training {job.candidate} failed (exit {completed.returncode}); "
                           f"the worker's output is above, its job file is {job_path}")


def _result(spec: CandidateSpec, job: TrainJob, manifest: dict, out: Path,
            run_id: str | None) -> FinetuneResult:
    metrics = json.loads((out / "train_metrics.json").read_text())
    weights = "model" if spec.method == "full" else "adapter"
    return FinetuneResult(
        candidate=spec.name, family=spec.family, method=spec.method, base_model=spec.base_model,
        base_model_path=job.base_model_path, adapter_dir=str(out / weights),
        artifact_path=weights, dataset_version=manifest["version"],
        dataset_digest=manifest["digest"], mlflow_run_id=run_id,
        **{k: metrics[k] for k in (
            "steps", "planned_steps", "resumed_from_step", "first_loss", "final_loss",
            "train_seconds", "tokens_per_second", "peak_memory_mb", "trainable_parameters",
            "total_parameters")})


class _tracked_run:
    """Open (or reopen, on a retry) the candidate's MLflow run and log what is known up front."""

    def __init__(self, config: FinetuneConfig, spec: CandidateSpec, manifest: dict,
                 run_id: str | None) -> None:
        self.config, self.spec, self.manifest, self.run_id = config, spec, manifest, run_id

    def __enter__(self):
        from tasks.core import tracking

        config, spec = self.config, self.spec
        paths = get_paths(config.home)
        tags = {"flywheel.cycle_id": config.cycle_id, "flywheel.candidate": spec.name,
                "flywheel.stage": "finetune", "flywheel.base_model": spec.base_model,
                "flywheel.family": spec.family, "flywheel.method": spec.method,
                "flywheel.dataset_version": self.manifest["version"]}
        self._context = tracking.run(config.workload_id, run_name=f"{config.cycle_id}/{spec.name}",
                                     run_id=self.run_id, tags=None if self.run_id else tags,
                                     paths=paths)
        active = self._context.__enter__()
        import mlflow

        if self.run_id is None:  # a resumed run has them already (and values may not change)
            hp = spec.hyperparameters.model_dump()
            hp["target_modules"] = spec.hyperparameters.lora_targets(spec.family)
            hp["modules_to_save"] = spec.hyperparameters.saved_modules(spec.family)
            mlflow.log_params({
                "candidate": spec.name, "base_model": spec.base_model, "family": spec.family,
                "method": spec.method, "deepspeed_config": spec.deepspeed_config,
                "zero_stage": json.loads(spec.deepspeed_config_path().read_text())
                .get("zero_optimization", {}).get("stage", 0),
                "dataset_version": self.manifest["version"],
                "dataset_digest": self.manifest["digest"], "seed": config.seed,
                **{f"resources.{k}": v for k, v in spec.resources.model_dump().items()},
                **{f"hp.{k}": v for k, v in hp.items()}})
            mlflow.log_dict(spec.model_dump(mode="json"), "candidate.json")
        return active, mlflow.get_tracking_uri()

    def __exit__(self, *exc) -> bool | None:
        return self._context.__exit__(*exc)


def _log_summary(result: FinetuneResult, metrics: dict, out: Path, spec: CandidateSpec) -> None:
    """Summary metrics and the weights, into the active run (the worker logged the curve)."""
    import mlflow

    if not metrics.get("live_logging", False):  # the worker could not reach the store
        for step, loss in enumerate(metrics["losses"], start=1):
            mlflow.log_metric("train_loss", loss, step=step)
    mlflow.log_params({"world_size": metrics["world_size"], "device": metrics["device"],
                       **{f"scope_guard_{k}": v for k, v in (result.scope_guard or {}).items()}})
    mlflow.log_metrics({
        **{k: float(metrics[k]) for k in (
            "train_seconds", "tokens_per_second", "peak_memory_mb", "trainable_parameters",
            "total_parameters", "final_loss", "first_loss", "resumed_from_step")},
        "train_steps": float(metrics["steps"])})
    mlflow.set_tags({"flywheel.peak_memory_kind": metrics["peak_memory_kind"],
                     "flywheel.base_model_path": result.base_model_path})
    mlflow.log_artifacts(result.adapter_dir, artifact_path=result.artifact_path)
    mlflow.log_artifact(str(out / "train_metrics.json"))


def ensure_training_pool(slots: int | None = None, airflow_bin: str | None = None) -> int:
    """Create the Airflow pool of GPU slots the finetune task runs in, if it is missing.

    A task assigned to a pool that does not exist is never scheduled, so deployments run this
    once after ``airflow db migrate`` (the demo and ``flywheel serve`` do). Pools live in the
    metadata database; in Airflow 3 tasks cannot write it, so this goes through the ``airflow
    pools`` command. An existing pool keeps its size (operators may have tuned it).

    Args:
        slots: pool size for a new pool; default ``$FLYWHEEL_GPU_SLOTS``, else the GPUs visible
            here, else 1 (one training job at a time on a CPU host).
        airflow_bin: the ``airflow`` executable (default: the one beside this Python).

    Returns:
        The pool's size.
    """
    airflow = airflow_bin or str(Path(sys.executable).with_name("airflow"))
    found = subprocess.run([airflow, "pools", "get", TRAINING_POOL, "-o", "json"],
                           capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip().startswith("["):
        return int(json.loads(found.stdout)[0]["slots"])
    if slots is None:
        import torch

        slots = int(os.environ.get("FLYWHEEL_GPU_SLOTS") or torch.cuda.device_count() or 1)
    created = subprocess.run(
        [airflow, "pools", "set", TRAINING_POOL, str(slots),
         "GPU slots for fine-tuning jobs (a CPU-only job takes one)"],
        capture_output=True, text=True)
    if created.returncode != 0:
        raise RuntimeError(f"could not create Airflow pool {TRAINING_POOL}: "
                           f"{created.stderr.strip() or created.stdout.strip()}")
    return slots


def main(argv: list[str] | None = None) -> int:
    config = parse_config(FinetuneConfig, argv, "flywheel finetune", __doc__)
    result = finetune(config)
    resumed = (f", resumed at step {result.resumed_from_step}"
               if result.resumed_from_step else "")
    print(f"{result.candidate}: loss {result.first_loss:.3f} -> {result.final_loss:.3f} "
          f"in {result.steps} steps{resumed}, {result.train_seconds:.1f}s "
          f"({result.tokens_per_second:.0f} tokens/s); weights at {result.adapter_dir}")
    return 0
