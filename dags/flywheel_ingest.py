"""
### flywheel_ingest

Keeps the store fresh between nightly cycles: every 15 minutes, read new files from the landing
folder (dropped by agents, or written by the HTTP intake), validate them with great-expectations,
quarantine what fails with every reason, and append the rest to the store. Re-running an interval
stores nothing twice. Marks the Asset `flywheel_store` updated, which a cycle can be scheduled on.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task

STORE = Asset("flywheel_store", uri="file:///flywheel/store/records")
#: How often ingestion runs by itself (cron); "none" turns the schedule off (manual runs only).
INGEST_SCHEDULE = os.environ.get("FLYWHEEL_INGEST_SCHEDULE", "*/15 * * * *")


@dag(
    dag_id="flywheel_ingest",
    schedule=None if INGEST_SCHEDULE.lower() in {"", "none"} else INGEST_SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1),
                  "execution_timeout": timedelta(hours=1)},
    tags=["flywheel"],
    doc_md=__doc__,
)
def flywheel_ingest():
    @task
    def ingest() -> dict:
        from airflow.sdk import get_current_context

        from tasks.core.config import run_folder_name
        from tasks.ingest.landing import IngestConfig
        from tasks.ingest.landing import ingest as run

        run_id = run_folder_name(get_current_context()["run_id"])
        return run(IngestConfig(run_id=run_id)).model_dump(mode="json")

    @task(outlets=[STORE])
    def validate(ingested: dict) -> dict:
        from tasks.ingest.validate import ValidateConfig, validate_waiting

        # every batch not yet stored, oldest first: a batch whose validation died waits for this
        return validate_waiting(ValidateConfig(run_id=ingested["run_id"])).model_dump(
            mode="json")

    validate(ingest())


flywheel_ingest()
