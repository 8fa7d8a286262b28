"""MLflow conventions: where runs go, what they are called, how the embedded store is set up.

Registry names, aliases and tags are documented in ``mlflow/README.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from mlflow.entities import Experiment
    from mlflow.tracking.fluent import ActiveRun

from tasks.core.config import Paths, get_paths, mlflow_artifact_root, mlflow_tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"


def experiment_name(workload_id: str) -> str:
    return f"flywheel-{workload_id}"


def registered_model_name(workload_id: str) -> str:
    return f"flywheel-{workload_id}"


def configure(paths: Paths | None = None) -> ModuleType:
    """Point MLflow at the configured tracking URI; returns the ``mlflow`` module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    paths = paths or get_paths()
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(mlflow_tracking_uri(paths))
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that so the next home's embedded
    # store is not shadowed by this one (a URI the user exported stays as it was)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def ensure_experiment(workload_id: str, paths: Paths | None = None) -> str:
    """The experiment id of a workload, created with a local artifact root when embedded."""
    mlflow = configure(paths)
    name = experiment_name(workload_id)
    experiment: Experiment | None = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # an embedded store keeps artifacts under the home; a tracking server decides for itself
    embedded = mlflow.get_tracking_uri().startswith(("sqlite:", "file:", "/"))
    location = mlflow_artifact_root(paths) if embedded else None
    try:
        created: str = mlflow.create_experiment(name, artifact_location=location)
        return created
    except Exception:  # created concurrently by another task: use theirs
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def run(workload_id: str, run_name: str | None = None, run_id: str | None = None,
        tags: dict[str, str] | None = None, paths: Paths | None = None) -> Iterator[ActiveRun]:
    """Start (or resume, given ``run_id``) an MLflow run in the workload's experiment."""
    mlflow = configure(paths)
    experiment_id = ensure_experiment(workload_id, paths)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                          run_name=run_name, tags=tags) as active:
        yield active
