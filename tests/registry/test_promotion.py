"""Promotion after approval: alias moves, the gate tag checked first, crash safety."""

from __future__ import annotations

import pytest

from tasks.core import tracking
from tasks.registry.register import (
    PromotionRefused,
    aliases,
    champion_version,
    promote,
    promote_registered,
    register_winner,
)
from tests.registry.test_register import (
    decision,
    evaluation,
    fake_model,
    register_one,
    training_run,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("registry-home"))


def client_of(home):
    return tracking.configure(tracking.get_paths(home)).MlflowClient()


def test_first_model_goes_challenger_then_champion_on_approval(home, tmp_path):
    registered = register_one(home, tmp_path, "a", 0.8, "c1", workload="first")
    assert aliases("first", home) == {"challenger": "1"}
    promoted = promote_registered(registered, "first", approved_by="alice", home=home)
    assert promoted["promoted"] and promoted["previous"] is None
    assert aliases("first", home) == {"champion": "1"}
    version = client_of(home).get_model_version("flywheel-first", "1")
    assert version.tags["approved_by"] == "alice" and "promoted_at" in version.tags
    again = promote_registered(registered, "first", approved_by="alice", home=home)
    assert again["changed"] is False and aliases("first", home) == {"champion": "1"}


def test_promotion_keeps_the_old_champion_as_previous(home, tmp_path):
    first = register_one(home, tmp_path, "a", 0.8, "c1", workload="two")
    promote("two", first["version"], home=home)
    second = register_one(home, tmp_path, "b", 0.85, "c2", workload="two")
    assert second["alias"] == "challenger"
    assert aliases("two", home) == {"champion": "1", "challenger": "2"}
    move = promote("two", second["version"], approved_by="bob", home=home)
    assert (move.version, move.previous, move.changed) == ("2", "1", True)
    assert aliases("two", home) == {"champion": "2", "previous-champion": "1"}


def test_a_version_that_failed_the_gate_is_never_promoted(home, tmp_path):
    register_one(home, tmp_path, "a", 0.8, "c1", workload="tampered")
    promote("tampered", "1", home=home)
    register_one(home, tmp_path, "b", 0.9, "c2", workload="tampered")
    client = client_of(home)
    client.set_model_version_tag("flywheel-tampered", "2", "gate", "failed")
    with pytest.raises(PromotionRefused, match="did not pass the gate"):
        promote("tampered", "2", home=home)
    with pytest.raises(PromotionRefused, match="no version 9"):
        promote("tampered", "9", home=home)
    assert str(champion_version("tampered", home).version) == "1"


def test_a_crash_between_registration_and_promotion_leaves_the_champion_alone(
        home, tmp_path, monkeypatch):
    import mlflow

    register_one(home, tmp_path, "a", 0.8, "c1", workload="crash")
    promote("crash", "1", home=home)

    # crash 1: registration dies right after creating the version, before any alias move
    calls = []
    original = mlflow.MlflowClient.set_registered_model_alias

    def dies(self, name, alias, version):
        calls.append((alias, str(version)))
        raise RuntimeError("worker killed")

    base, adapter = fake_model(tmp_path, "b")
    winner = evaluation("b", training_run(home, tmp_path, "b", "crash"), 0.9, base, adapter)
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", dies)
    with pytest.raises(RuntimeError, match="worker killed"):
        register_winner(decision("b"), [winner], "crash", "c2", home=home)
    assert calls == [("challenger", "2")]
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", original)
    assert aliases("crash", home) == {"champion": "1"}

    # crash 2: the promotion dies after keeping previous-champion, before moving champion
    def dies_on_champion(self, name, alias, version):
        if alias == "champion":
            raise RuntimeError("worker killed")
        return original(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", dies_on_champion)
    with pytest.raises(RuntimeError, match="worker killed"):
        promote("crash", "2", home=home)
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", original)
    assert str(champion_version("crash", home).version) == "1"  # still the gate-passed old one

    # the retried tasks finish the job, each step idempotent
    retried = register_winner(decision("b"), [winner], "crash", "c2", home=home)
    assert (retried["version"], retried["alias"]) == ("2", "challenger")  # the same version
    move = promote("crash", "2", home=home)
    assert (move.version, move.previous) == ("2", "1")
    assert aliases("crash", home) == {"champion": "2", "previous-champion": "1"}


# ---------------------------------------------------- approval in its own DAG
# (tasks.registry.promotion)


def test_the_promotion_run_decides_on_the_newest_announced_challenger(home, tmp_path):
    from tasks.registry.promotion import challenger_event, pending_challenger

    registered = register_one(home, tmp_path, "a", 0.8, "c1", workload="announced")
    event = challenger_event(registered, "announced", "c1", False, decision("a"))
    assert event["version"] == "1" and event["candidate"] == "a"
    assert event["verdicts"][0].startswith("a: PASS - accuracy ok")
    assert challenger_event({"registered": False}, "announced", "c1", True, decision("a")) is None
    newer = {**event, "version": "2", "cycle_id": "c2"}
    assert pending_challenger([event, newer], {})["version"] == "2"  # the older was superseded
    with pytest.raises(ValueError, match="several workloads"):
        pending_challenger([event, {**newer, "workload_id": "other"}], {})
    with pytest.raises(ValueError, match="names the version"):
        pending_challenger([], {"workload_id": "announced"})
    by_hand = pending_challenger([], {"workload_id": "announced", "version": "1",
                                      "auto_approve": True, "home": home})
    assert (by_hand["version"], by_hand["cycle_id"], by_hand["auto_approve"]) == ("1", "c1", True)
    with pytest.raises(PromotionRefused, match="no version 7"):
        pending_challenger([], {"workload_id": "announced", "version": "7", "home": home})


def test_an_approved_challenger_is_promoted_into_its_cycle_report_and_a_stale_one_is_not(
        home, tmp_path):
    import json

    from tasks.core.config import get_paths
    from tasks.registry.promotion import challenger_event, promote_challenger
    from tasks.reporting.report import load_report, record_promotion

    first = register_one(home, tmp_path, "a", 0.8, "c1", workload="late")
    second = register_one(home, tmp_path, "b", 0.85, "c2", workload="late")
    folder = get_paths(home).runs / "c2"
    folder.mkdir(parents=True)
    ev = evaluation("b", "run", 0.85)
    (folder / "report.json").write_text(json.dumps({
        "workload_id": "late", "evaluations": [ev], "decision": decision("b"),
        "registered": second, "promoted": None, "champion_before": None,
        "champion": {"version": None, "candidate": None, "accuracy": None,
                     "latency_p95_ms": None, "changed": False},
        "history": [{"cycle": "c2", "version": None}]}))

    written = (folder / "report.json").read_text()
    promoted = promote_challenger(challenger_event(second, "late", "c2", False, decision("b")),
                                  "carol", home)
    assert promoted["promoted"] and promoted["version"] == "2"
    assert json.loads((folder / "promoted.json").read_text())["version"] == "2"
    assert record_promotion("c2", "late", home)  # the promotion DAG's last task
    assert (folder / "report.json").read_text() == written  # written once, by the report task
    report = load_report("c2", home)
    assert report["champion"]["version"] == "2" and report["champion"]["accuracy"] == 0.85
    assert report["history"][-1]["version"] == "2"
    assert "Approved and promoted: version 2" in (folder / "report.html").read_text()

    # yesterday's challenger, approved after today's: not promoted over the newer champion
    stale = promote_challenger(challenger_event(first, "late", "c1", False, decision("a")),
                               "dave", home)
    assert stale["promoted"] is False and "champion v2 is newer than v1" in stale["reason"]
    assert str(champion_version("late", home).version) == "2"
