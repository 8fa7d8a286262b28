"""Rollback, as a function and as the flywheel_rollback DAG (``dag.test()``)."""

from __future__ import annotations

import pytest

from tasks.registry.register import PromotionRefused, aliases, promote, rollback
from tests.registry.test_register import register_one


def three_versions(home, tmp_path, workload: str) -> None:
    for i, name in enumerate(("a", "b", "c"), start=1):
        registered = register_one(home, tmp_path, name, 0.7 + i / 100, f"c{i}", workload=workload)
        promote(workload, registered["version"], home=home)


def test_rollback_restores_previous_champion_and_can_be_undone(tmp_path):
    home = str(tmp_path)
    three_versions(home, tmp_path, "rb")
    assert aliases("rb", home) == {"champion": "3", "previous-champion": "2"}
    move = rollback("rb", home=home, reason="p95 regression in production")
    assert (move.version, move.previous) == ("2", "3")
    assert aliases("rb", home) == {"champion": "2", "previous-champion": "3"}
    rollback("rb", "1", home=home)
    assert aliases("rb", home) == {"champion": "1", "previous-champion": "2"}
    rollback("rb", home=home)  # undo: back to 2
    assert aliases("rb", home)["champion"] == "2"
    from tasks.core import tracking

    client = tracking.configure(tracking.get_paths(home)).MlflowClient()
    tags = client.get_model_version("flywheel-rb", "3").tags
    assert "p95 regression in production" in tags["rolled_back_from_at"]

    client.set_model_version_tag("flywheel-rb", "1", "gate", "failed")
    with pytest.raises(PromotionRefused, match="did not pass the gate"):
        rollback("rb", "1", home=home)
    assert aliases("rb", home)["champion"] == "2"


def test_nothing_to_roll_back_to_is_a_clear_error(tmp_path):
    home = str(tmp_path)
    registered = register_one(home, tmp_path, "a", 0.8, "c1", workload="single")
    promote("single", registered["version"], home=home)
    with pytest.raises(PromotionRefused, match="no alias previous-champion"):
        rollback("single", home=home)


@pytest.mark.slow
def test_rollback_dag_moves_the_alias(session_home, airflow_db, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    home = str(session_home)
    three_versions(home, tmp_path, "rbdag")
    dag = DagBag(dag_folder="dags").dags["flywheel_rollback"]
    run = dag.test(run_conf={"workload_id": "rbdag", "version": "1", "reason": "test"})
    assert run.state == DagRunState.SUCCESS
    assert aliases("rbdag", home) == {"champion": "1", "previous-champion": "3"}
