"""Integration tier: the production path on real servers, started here and stopped by PID.

One PostgreSQL cluster holds Airflow's metadata DB and MLflow's backend store; an MLflow tracking
server and Airflow's components (api-server, scheduler, dag-processor, triggerer) run as their own
processes on 127.0.0.1. The pipeline's tasks run in the scheduler's LocalExecutor workers with
their own flywheel home, exactly as a deployment runs them; only the sizes are small.
``test_celery_cycle.py`` runs a cycle under the CeleryExecutor instead, with a Redis broker and
two workers (its own databases, MLflow server and home).

Without PostgreSQL server binaries the tier is skipped on a developer's machine and fails in CI
(``CI`` set), where ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.core.config import Paths, local_environment
from tests.integration.servers import (
    AirflowStack,
    MlflowServer,
    Postgres,
    airflow_environment,
    free_port,
    postgres_bindir,
    start_postgres,
)

DAG_ID = "flywheel_cycle"


def missing_prerequisite(message: str) -> None:
    """A system package the tier needs is absent: fail in CI (``.ci/run`` installs it), skip on
    a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    if postgres_bindir() is None:
        missing_prerequisite("PostgreSQL server binaries not found: `apt-get install postgresql` "
                             "(.ci/run does) or set FLYWHEEL_PG_BINDIR")
    server = start_postgres(databases=("airflow", "mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def integration_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flywheel home the deployed tasks use (not the session's embedded one)."""
    return Paths(tmp_path_factory.mktemp("integration-home")).ensure().home


def start_mlflow(postgres: Postgres, database: str, home: Path) -> MlflowServer:
    """An MLflow server on its own Postgres database, its artifacts and log under ``home``."""
    server = MlflowServer(
        backend_uri=postgres.url(database), artifacts=home / "mlflow-server-artifacts",
        log_path=home / "server-logs" / "mlflow.log",
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    server.artifacts.mkdir(parents=True, exist_ok=True)
    return server.start()


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, integration_home: Path) -> MlflowServer:
    server = start_mlflow(postgres, "mlflow", integration_home)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_stack(postgres: Postgres, mlflow_server: MlflowServer,
                  integration_home: Path) -> AirflowStack:
    """Airflow on Postgres with the flywheel DAGs parsed and the pools their tasks name."""
    port = free_port()
    base = {**os.environ, **local_environment(Paths(integration_home), inherit=False)}
    env = airflow_environment(base, postgres.url("airflow"), port, mlflow_server.url)
    stack = AirflowStack(env=env, log_dir=integration_home / "server-logs", port=port)
    stack.start()
    try:
        stack.wait_for_dag(DAG_ID)
        stack.ensure_pools(DAG_ID)
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()
