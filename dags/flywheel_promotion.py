"""
### flywheel_promotion

Approval and promotion of a registered challenger, apart from the cycle that registered it, so the
nightly wheel never waits on a person.

Runs whenever a cycle announces a challenger (the Asset `flywheel_challenger`, updated by the
cycle's `announce` task), or by hand with a workload and version. A reviewer approves or rejects
it in the UI's *Required actions* (up to 3 days; no answer is a rejection), unless the cycle ran
with `auto_approve`. Approved, alias `champion` moves to it and the old champion is kept as
`previous-champion`; a challenger older than the champion (a newer one was approved first) is
not promoted over it. The cycle's report is updated with the outcome.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, dag, task

#: updated when a cycle registers a challenger (tasks.registry.promotion.CHALLENGER_ASSET)
CHALLENGER = Asset("flywheel_challenger", uri="file:///flywheel/registry/challenger")
#: How long a challenger waits for a reviewer; no answer by then is a rejection.
APPROVAL_TIMEOUT = timedelta(days=3)


@dag(
    dag_id="flywheel_promotion",
    schedule=[CHALLENGER],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=8,  # each challenger waits for its own reviewer; none blocks another
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30),
                  "execution_timeout": timedelta(minutes=30)},
    tags=["flywheel"],
    doc_md=__doc__,
    params={
        "workload_id": Param("router", type="string", minLength=1,
                             description="By hand: the workload whose challenger is decided."),
        "version": Param(None, type=["null", "string"], pattern="^[0-9]+$",
                         description="By hand: the registered version to decide on (a run the "
                                     "Asset starts takes it from the cycle)."),
        "auto_approve": Param(False, type="boolean",
                              description="By hand: promote without asking a reviewer."),
    },
)
def flywheel_promotion():
    @task
    def challenger(params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.registry.promotion import pending_challenger

        events = get_current_context()["triggering_asset_events"]
        extras = [e.extra for e in events[CHALLENGER]] if CHALLENGER in events else []
        return pending_challenger(extras, dict(params))

    @task.branch
    def approval_route(pending: dict) -> list[str]:
        return ["auto_approve"] if pending["auto_approve"] else ["approve"]

    @task
    def auto_approve() -> dict:
        return {"approved_by": "auto_approve param"}

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='challenger')['model_name'] }} version "
                "{{ ti.xcom_pull(task_ids='challenger')['version'] }} to champion?",
        body="Cycle {{ ti.xcom_pull(task_ids='challenger')['cycle_id'] }} registered it; it "
             "passed the gate. Verdicts:\n"
             "{% for v in ti.xcom_pull(task_ids='challenger')['verdicts'] %}- {{ v }}\n"
             "{% endfor %}"
             "Approve moves alias champion to it (the current one becomes previous-champion); "
             "Reject leaves it as challenger.",
        response_timeout=APPROVAL_TIMEOUT,
        execution_timeout=None,  # it waits by response_timeout
        defaults=["Reject"],
    )

    @task(trigger_rule="none_failed_min_one_success")
    def promote(pending: dict) -> dict:
        from airflow.sdk import get_current_context

        from tasks.registry.promotion import approved_by, promote_challenger

        ti = get_current_context()["ti"]
        answer = ti.xcom_pull(task_ids="approve") or ti.xcom_pull(task_ids="auto_approve")
        return promote_challenger(pending, approved_by(answer))

    @task
    def report(promoted: dict, pending: dict) -> bool:
        """The challenger's cycle report rendered again with the promotion, its MLflow run
        tagged with who serves now."""
        from tasks.reporting.report import record_promotion

        if not (promoted.get("promoted") and pending.get("cycle_id")):
            return False
        return record_promotion(pending["cycle_id"], pending["workload_id"])

    pending = challenger()
    approved = [approve, auto_approve()]
    approval_route(pending) >> approved
    report(approved >> promote(pending), pending)


flywheel_promotion()
