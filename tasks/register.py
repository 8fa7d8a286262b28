"""Register the gate's winner in the MLflow model registry and set its alias.

    flywheel register --cycle-result runs/<cycle>/cycle.json

The winner's adapter (logged as an artifact of its training run) becomes a new version of the
workload's registered model, with its metrics and the gate's verdict as version tags and a readable
description. It gets alias ``champion`` when the model has none yet, ``challenger`` otherwise:
promotion of a challenger waits for a reviewer (see ``mlflow/README.md``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks import tracking
from tasks.config import get_paths


class RegisterConfig(BaseModel):
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    cycle_id: str = Field(min_length=1, description="Cycle (DAG run) that produced the winner.")
    candidate: str = Field(min_length=1, description="The gate's winner.")
    mlflow_run_id: str = Field(min_length=1, description="The winner's training run.")
    base_model: str = Field(description="Base model the adapter applies to.")
    dataset_version: str = Field(description="Curated dataset version it was trained on.")
    metrics: dict[str, float] = Field(description="Metrics to tag the version with.")
    verdict: list[str] = Field(default_factory=list, description="The gate's reasons.")
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


class RegisterResult(BaseModel):
    model_name: str
    version: str
    alias: str
    source: str


def champion_version(workload_id: str, home: str | None = None):
    """The version that holds alias ``champion``, or None."""
    mlflow = tracking.configure(get_paths(home))
    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(tracking.registered_model_name(workload_id),
                                                 tracking.CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def champion_accuracy(workload_id: str, home: str | None = None) -> float | None:
    """The champion's recorded test accuracy (tag ``test_accuracy``), or None without one."""
    version = champion_version(workload_id, home)
    if version is None or "test_accuracy" not in version.tags:
        return None
    return float(version.tags["test_accuracy"])


def register(config: RegisterConfig) -> RegisterResult:
    """Create the model version with tags and description; alias it champion or challenger."""
    mlflow = tracking.configure(get_paths(config.home))
    client = mlflow.MlflowClient()
    name = tracking.registered_model_name(config.workload_id)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=(
            f"Router model of workload '{config.workload_id}', produced by the flywheel. "
            "Alias 'champion' is served; 'challenger' awaits review."))
    # idempotent on retry: the same training run is registered once
    for existing in client.search_model_versions(f"name='{name}'"):
        if existing.run_id == config.mlflow_run_id:
            version = existing
            break
    else:
        source = f"{client.get_run(config.mlflow_run_id).info.artifact_uri}/adapter"
        tags = {
            **{k: f"{v:.6g}" for k, v in config.metrics.items()},
            "candidate": config.candidate, "base_model": config.base_model,
            "dataset_version": config.dataset_version, "cycle_id": config.cycle_id,
            "gate": "passed", "gate_reasons": "; ".join(config.verdict),
        }
        description = (f"{config.candidate}: LoRA adapter on {config.base_model}, trained on "
                       f"dataset {config.dataset_version} in cycle {config.cycle_id}. Gate passed: "
                       + "; ".join(config.verdict))
        version = client.create_model_version(name, source=source, run_id=config.mlflow_run_id,
                                              tags=tags, description=description)
    current = champion_version(config.workload_id, config.home)
    if current is not None and current.version == version.version:
        alias = tracking.CHAMPION  # a retry after the alias was already set
    else:
        alias = tracking.CHALLENGER if current is not None else tracking.CHAMPION
        client.set_registered_model_alias(name, alias, version.version)
    return RegisterResult(model_name=name, version=str(version.version), alias=alias,
                          source=version.source)


def register_winner(decision: dict, evaluations: list[dict], workload_id: str, cycle_id: str,
                    home: str | None = None) -> dict:
    """Register the gate's winner, if any; returns what was registered (or why nothing was)."""
    winner = decision.get("winner")
    if not winner:
        return {"registered": False, "reason": "no candidate passed the gate"}
    evaluation = next(e for e in evaluations if e["candidate"] == winner)
    verdict = next(v for v in decision["verdicts"] if v["candidate"] == winner)
    tuned = evaluation["finetuned"]
    metrics = {k: tuned[k] for k in ("accuracy", "macro_f1", "latency_p50_ms", "latency_p95_ms",
                                     "ttft_p50_ms")}
    metrics["test_accuracy"] = metrics.pop("accuracy")
    metrics["base_accuracy"] = evaluation["base"]["accuracy"]
    result = register(RegisterConfig(
        workload_id=workload_id, cycle_id=cycle_id, candidate=winner,
        mlflow_run_id=evaluation["mlflow_run_id"], base_model=evaluation["base_model"],
        dataset_version=evaluation["dataset_version"], metrics=metrics,
        verdict=verdict["reasons"], home=home))
    return {"registered": True, **result.model_dump(mode="json")}
