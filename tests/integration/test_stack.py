"""The servers themselves: Airflow's state is in Postgres, MLflow answers over HTTP on Postgres."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import DAG_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_airflow_metadata_lives_in_postgres(airflow_stack, postgres):
    assert airflow_stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
        "postgresql+psycopg2://")
    # the DAG the dag-processor parsed is a row of the Postgres database the API reads
    rows = postgres.query("airflow", "SELECT dag_id, is_paused FROM dag WHERE dag_id = %s",
                          (DAG_ID,))
    assert rows == [(DAG_ID, False)]
    assert airflow_stack.api("GET", f"dags/{DAG_ID}")["dag_id"] == DAG_ID
    health = airflow_stack.api("GET", "monitor/health")
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy"
    # every pool a task names exists (a task in a missing pool would wait forever)
    pools = {p["name"] for p in airflow_stack.api("GET", "pools")["pools"]}
    named = {t["pool"] for t in airflow_stack.api("GET", f"dags/{DAG_ID}/tasks")["tasks"]}
    assert named <= pools


def test_mlflow_server_stores_in_postgres(mlflow_server, postgres):
    name = f"probe-{uuid.uuid4().hex[:8]}"
    created = mlflow_server.api("POST", "experiments/create", {"name": name})
    found = mlflow_server.api("GET", "experiments/get-by-name", experiment_name=name)
    assert found["experiment"]["experiment_id"] == created["experiment_id"]
    assert found["experiment"]["artifact_location"].startswith("mlflow-artifacts:")
    rows = postgres.query("mlflow", "SELECT name FROM experiments WHERE name = %s", (name,))
    assert rows == [(name,)]
