"""flywheel_ingest through Airflow: a second run over the same landing files stores nothing new."""

from __future__ import annotations

import datetime as dt

import pytest


@pytest.mark.slow
def test_ingest_dag_is_idempotent(tmp_path, monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    from tasks.demo.simulate import SimulateConfig, simulate
    from tasks.ingest.store import load_store

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))  # tasks read it when they run
    sim = simulate(SimulateConfig(seed=3, days=1, records_per_day=400, home=str(tmp_path),
                                  start_date=dt.date.today() - dt.timedelta(days=1)))
    dag = DagBag(dag_folder="dags").dags["flywheel_ingest"]

    assert dag.test().state == DagRunState.SUCCESS
    stored = load_store(str(tmp_path))
    assert len(stored) == stored["id"].nunique() == sim.records

    simulate(SimulateConfig(seed=3, days=1, records_per_day=400, home=str(tmp_path),
                            start_date=dt.date.today() - dt.timedelta(days=1)))  # re-delivery
    assert dag.test().state == DagRunState.SUCCESS
    assert len(load_store(str(tmp_path))) == sim.records
