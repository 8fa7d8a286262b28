"""
### flywheel_rollback

Give alias `champion` of a workload's registered model back to an earlier version: the served
router changes on the agent's next load (`models:/flywheel-<workload>@champion`).

Trigger it by hand with the workload and, optionally, the version to restore; without a version it
restores the one under alias `previous-champion`. The version rolled back from becomes
`previous-champion` (so a rollback can be undone the same way), and both versions get a tag saying
when. A version that did not pass the gate (its `gate` tag) is refused: the task fails and
`champion` stays where it was.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task


@dag(
    dag_id="flywheel_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30),
                  "execution_timeout": timedelta(minutes=30)},
    tags=["flywheel"],
    doc_md=__doc__,
    params={
        "workload_id": Param("router", type="string", minLength=1,
                             description="Workload whose registered model rolls back."),
        "version": Param(None, type=["null", "string"], pattern="^[0-9]+$",
                         description="Version to restore; empty = alias previous-champion."),
        "reason": Param("", type="string", description="Why (recorded as a version tag)."),
    },
)
def flywheel_rollback():
    @task
    def rollback(params: dict | None = None) -> dict:
        from tasks.registry.register import rollback as run

        move = run(params["workload_id"], params.get("version") or None,
                   reason=params.get("reason") or "")
        return move.model_dump(mode="json")

    rollback()


flywheel_rollback()
