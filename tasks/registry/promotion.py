"""Approval and promotion, apart from the cycle: the wheel never waits on a person.

A cycle ends when its winner is registered as alias ``challenger``: its ``announce`` task updates
the Airflow Asset ``flywheel_challenger`` with :func:`challenger_event` as the event's extra. That
event starts a run of the DAG ``flywheel_promotion``, which asks a reviewer (or, with the cycle's
``auto_approve``, nobody) and then calls :func:`promote_challenger`. Tonight's cycle runs while
yesterday's challenger still waits for its reviewer.

A challenger older than the champion (a newer one was approved first) is not promoted over it:
the run says so, and ``flywheel_rollback`` is the way back to an older version. The outcome is
its own record, ``runs/<cycle>/promoted.json`` (:mod:`tasks.core.outcomes`); the promotion DAG's
last task renders the cycle's report pages again from it and tags the MLflow cycle run
(:func:`tasks.reporting.report.record_promotion`), so the report and the champion history show who
serves after the approval.
"""

from __future__ import annotations

from typing import Any

from tasks.core.outcomes import write_outcome

#: the Asset a registration updates and the promotion DAG is scheduled on
CHALLENGER_ASSET = "flywheel_challenger"
CHALLENGER_ASSET_URI = "file:///flywheel/registry/challenger"


def challenger_event(registered: dict, workload_id: str, cycle_id: str, auto_approve: bool,
                     decision: dict) -> dict | None:
    """The extra of the Asset event that announces a registered challenger (None: nothing was
    registered, nothing to announce)."""
    if not registered.get("registered"):
        return None
    return {"workload_id": workload_id, "cycle_id": cycle_id,
            "model_name": registered["model_name"], "version": str(registered["version"]),
            "candidate": registered.get("candidate"), "auto_approve": bool(auto_approve),
            "verdicts": [f"{v['candidate']}: {'PASS' if v['passed'] else 'FAIL'} - "
                         + "; ".join(v["reasons"]) for v in decision.get("verdicts") or []]}


def pending_challenger(events: list[dict], params: dict) -> dict:
    """The challenger a promotion run decides on: from the triggering Asset events (the newest
    version of each workload; an older one in the same run was superseded before anyone saw it),
    or, for a run triggered by hand, from its params (``workload_id``, ``version``,
    ``auto_approve``).

    Raises:
        ValueError: events of several workloads in one run, or a hand-triggered run without a
            version.
        PromotionRefused: the hand-named version does not exist.
    """
    events = [e for e in events if isinstance(e, dict) and e.get("version")]
    if events:
        workloads = {e["workload_id"] for e in events}
        if len(workloads) > 1:
            raise ValueError(f"challengers of several workloads in one run: {sorted(workloads)}")
        return max(events, key=lambda e: int(e["version"]))
    if not params.get("version"):
        raise ValueError("no challenger: a run triggered by hand names the version to decide on")
    from tasks.core.tracking import registered_model_name
    from tasks.registry.register import PromotionRefused, _client

    name = registered_model_name(params["workload_id"])
    version = str(params["version"])
    try:
        found = _client(params.get("home")).get_model_version(name, version)
    except Exception as exc:  # MLflow raises its own not-found error
        raise PromotionRefused(f"{name} has no version {version}") from exc
    return {"workload_id": params["workload_id"], "cycle_id": found.tags.get("cycle_id"),
            "model_name": name, "version": version, "candidate": found.tags.get("candidate"),
            "auto_approve": bool(params.get("auto_approve")),
            "verdicts": [found.tags.get("gate_reasons", "")]}


def promote_challenger(challenger: dict, approved_by: str, home: str | None = None) -> dict:
    """Move alias champion to the approved challenger, unless the champion is already newer;
    record the outcome in the challenger's cycle report."""
    from tasks.registry.register import champion_version, promote

    workload, version = challenger["workload_id"], str(challenger["version"])
    current = champion_version(workload, home)
    if current is not None and int(current.version) > int(version):
        return {"promoted": False, "version": version,
                "reason": f"champion v{current.version} is newer than v{version} (approved "
                          "later than it); flywheel_rollback restores an older version"}
    move = promote(workload, version, approved_by=approved_by, home=home)
    promoted = {"promoted": True, **move.model_dump(mode="json")}
    if challenger.get("cycle_id"):
        write_outcome(challenger["cycle_id"], "promoted", promoted, home)
    return promoted


def approved_by(answer: dict | None) -> str:
    """Who approved, from the approval task's answer (a reviewer) or auto_approve's."""
    answer = answer or {}
    user: Any = answer.get("responded_by_user") or {}
    return answer.get("approved_by") or (
        (user.get("name") or user.get("id")) if isinstance(user, dict) else str(user)) or ""
