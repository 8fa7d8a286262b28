"""Validation: the great-expectations suite, quarantine reasons, the store and feedback merging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.core.records import make_request, make_response
from tasks.ingest.landing import IngestConfig, ingest
from tasks.ingest.store import load_store
from tasks.ingest.validate import (
    ValidateConfig,
    ValidateResult,
    ValidationFailed,
    main,
    validate,
)


def record(i: int, expert: str = "banking", **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema_version": 1, "id": f"r{i}", "timestamp": f"2026-11-20T09:{i % 60:02d}:00.000Z",
        "workload_id": "router", "client_id": "hr-portal", "model": "teacher-70b",
        "request": make_request(f"how do I do thing number {i}?"),
        "response": make_response(expert, f"call-{i}"), "latency_ms": 1200.0 + i,
    }
    rec.update(fields)
    return rec


def event(i: int, rating: int, timestamp: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "feedback", "id": f"r{i}", "timestamp": timestamp, "rating": rating,
            "source": "user", **fields}


def deliver(home: Path, name: str, items: list[dict[str, Any]]) -> None:
    landing = home / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    (landing / name).write_text("".join(json.dumps(item) + "\n" for item in items))


def cycle(home: Path, run_id: str, **settings: Any) -> ValidateResult:
    ingest(IngestConfig(home=str(home), run_id=run_id))
    return validate(ValidateConfig(home=str(home), run_id=run_id, **settings))


def balanced(result: ValidateResult) -> bool:
    return result.records_in == result.stored + result.duplicates + result.quarantined


def test_suite_flags_bad_rows_with_every_reason(tmp_path: Path) -> None:
    deliver(tmp_path, "router-2026-11-20.jsonl", [
        *(record(i) for i in range(10)),
        record(10, expert="payroll"),
        record(11, feedback={"rating": 0, "source": "user"}),
        record(12, latency_ms=9e9),
        record(13, expert="payroll", latency_ms=-5, client_id=""),
        record(14, timestamp="yesterday"),
        record(15, timestamp="2999-01-01T00:00:00Z"),
        record(16, request=make_request("x" * 50)),
        {k: v for k, v in record(17).items() if k != "id"},
        record(0, expert="travel"),  # same id as r0, different content: both are suspect
    ])
    result = cycle(tmp_path, "b1", max_invalid_fraction=1.0, max_query_chars=40)

    assert balanced(result)
    assert (result.records_in, result.quarantined, result.stored) == (19, 10, 9)
    assert result.expectations["route_in_experts"].unexpected_count == 2
    assert result.expectations["id_unique"].unexpected_count == 2
    assert result.expectations["workload_id_non_empty"].success
    reasons = pd.read_parquet(tmp_path / "quarantine" / "b1-validate.parquet").set_index("line")
    assert set(reasons["stage"]) == {"validate"}
    assert reasons.loc[11, "reason"] == "route_in_experts"
    assert reasons.loc[12, "reason"] == "rating_in_set"
    assert reasons.loc[13, "reason"] == "latency_ms_in_range"
    assert reasons.loc[14, "reason"].split("; ") == [
        "client_id_non_empty", "route_in_experts", "latency_ms_in_range"]
    assert reasons.loc[15, "reason"] == "timestamp_parseable"
    assert reasons.loc[16, "reason"] == "timestamp_in_bounds"
    assert reasons.loc[17, "reason"] == "query_length"
    assert reasons.loc[18, "reason"] == "id_not_null"
    assert reasons.loc[1, "reason"] == reasons.loc[19, "reason"] == "id_unique"
    assert json.loads(reasons.loc[11, "raw"])["id"] == "r10"

    validation = json.loads(Path(result.validation_path).read_text())
    assert validation["success"] is False and len(validation["results"]) == 16
    store = load_store(tmp_path)
    assert sorted(store["id"]) == sorted(f"r{i}" for i in range(1, 10))
    assert str(store["timestamp"].dtype) == "datetime64[us, UTC]"


def test_duplicates_are_stored_once_and_retries_are_idempotent(tmp_path: Path) -> None:
    deliver(tmp_path, "day1.jsonl", [record(1), record(2), record(3), record(3)])
    first = cycle(tmp_path, "b1")
    assert (first.stored, first.duplicates, first.quarantined) == (3, 1, 0)

    retry = validate(ValidateConfig(home=str(tmp_path), run_id="b1"))
    assert retry.model_dump(exclude={"validation_path"}) == first.model_dump(
        exclude={"validation_path"})

    # day 2: r2 re-delivered (with a rating it did not have), r3's id reused for another
    # decision, r1's for another query, and eight new records
    reused_query = record(1)
    reused_query["request"] = make_request("a different question entirely")
    deliver(tmp_path, "day2.jsonl", [record(2, feedback={"rating": 1, "source": "user"}),
                                     record(3, expert="travel"), reused_query,
                                     *(record(i) for i in range(4, 12))])
    second = cycle(tmp_path, "b2")
    assert balanced(second)
    assert (second.stored, second.duplicates, second.quarantined) == (8, 1, 2)
    assert second.expectations["id_not_reused"].unexpected_count == 2
    reasons = pd.read_parquet(second.quarantine_path).set_index("id")["reason"]
    assert reasons.to_dict() == {"r3": "id_not_reused", "r1": "id_not_reused"}
    store = load_store(tmp_path)
    assert len(store) == 11 and store["id"].is_unique
    assert store.set_index("id").loc["r3", "route"] == "banking"  # the stored record stands
    assert store.set_index("id").loc["r2", "rating"] == 1  # the re-delivery's rating counts
    # a retry of the batch finds the same, not its own part
    again = validate(ValidateConfig(home=str(tmp_path), run_id="b2"))
    assert (again.stored, again.duplicates, again.quarantined) == (8, 1, 2)


def test_late_feedback_latest_wins_and_pending_feedback_applies_later(tmp_path: Path) -> None:
    deliver(tmp_path, "day1.jsonl", [
        record(1, feedback={"rating": 1, "source": "user"}),  # inline, at the record's time
        record(2),
    ])
    deliver(tmp_path, "feedback-day1.jsonl", [
        event(1, -1, "2026-11-20T12:00:00Z", comment="wrong team"),
        event(1, 1, "2026-11-20T11:00:00Z"),                  # older: loses
        event(9, -1, "2026-11-20T12:00:00Z"),                 # its record has not arrived
    ])
    first = cycle(tmp_path, "b1")
    assert (first.feedback_merged, first.feedback_pending) == (3, 1)
    store = load_store(tmp_path).set_index("id")
    assert store.loc["r1", "rating"] == -1
    assert store.loc["r1", "feedback_comment"] == "wrong team"
    assert store.loc["r1", "feedback_at"] == pd.Timestamp("2026-11-20T12:00:00Z")
    assert pd.isna(store.loc["r2", "rating"])
    pending = pd.read_parquet(tmp_path / "store" / "feedback" / "pending.parquet")
    assert list(pending["id"]) == ["r9"]

    deliver(tmp_path, "day2.jsonl", [
        record(9), record(1, feedback={"rating": 1, "source": "sme"})])  # new, but older
    deliver(tmp_path, "feedback-day2.jsonl", [event(2, 1, "2026-11-21T08:00:00Z")])
    second = cycle(tmp_path, "b2")
    assert second.stored == 1 and second.duplicates == 1
    # r9's pending event, r2's new one and the sme rating inside r1's duplicate (older than -1)
    assert (second.feedback_merged, second.feedback_pending) == (3, 0)
    store = load_store(tmp_path).set_index("id")
    assert store.loc["r9", "rating"] == -1
    assert store.loc["r2", "rating"] == 1
    assert store.loc["r1", "rating"] == -1  # the duplicate's inline rating is older
    assert pd.read_parquet(tmp_path / "store" / "feedback" / "pending.parquet").empty

    # Re-sent lines carry the same events again: nothing new to merge.
    deliver(tmp_path, "day3.jsonl", [record(1, feedback={"rating": 1, "source": "user"})])
    third = cycle(tmp_path, "b3")
    assert (third.duplicates, third.feedback_merged, third.feedback_pending) == (1, 0, 0)


def test_a_bad_batch_stores_its_good_rows_and_raises_the_alarm(tmp_path: Path) -> None:
    deliver(tmp_path, "router-2026-11-20.jsonl", [
        record(1), record(2),
        record(3, expert="payroll", client_id="finance-app"),
        record(4, expert="payroll", client_id="finance-app"),
        record(5, latency_ms=-1.0, client_id="finance-app"),
    ])
    with pytest.raises(ValidationFailed) as failure:
        cycle(tmp_path, "b1", max_invalid_fraction=0.2)
    message = str(failure.value)
    assert "3 of 5" in message and "finance-app" in message
    assert "router-2026-11-20.jsonl" in message and "valid records are stored" in message
    quarantined = pd.read_parquet(tmp_path / "quarantine" / "b1-validate.parquet")
    assert sorted(quarantined["id"]) == ["r3", "r4", "r5"]
    assert (tmp_path / "staging" / "b1" / "validation.json").exists()
    # the other client's good rows are not stranded behind the bad file: lines in = stored +
    # quarantined, nothing lost
    assert sorted(load_store(tmp_path)["id"]) == ["r1", "r2"]

    # the nightly cycle flags it instead of failing; a retry of the batch changes nothing
    flagged = validate(ValidateConfig(home=str(tmp_path), run_id="b1", on_excess="flag"))
    assert (flagged.stored, flagged.quarantined, flagged.invalid_fraction) == (2, 3, 0.6)
    assert flagged.alarm == message
    assert sorted(load_store(tmp_path)["id"]) == ["r1", "r2"]
    relaxed = validate(ValidateConfig(home=str(tmp_path), run_id="b1", max_invalid_fraction=0.7))
    assert relaxed.alarm is None
    with pytest.raises(ValidationFailed):  # retried under the strict limit: alarm again,
        validate(ValidateConfig(home=str(tmp_path), run_id="b1"))  # the good rows stay
    assert sorted(load_store(tmp_path)["id"]) == ["r1", "r2"]

    # Lines ingestion could not parse count too: a client sending garbage fails the run.
    garbage = tmp_path / "garbage"
    deliver(garbage, "router-2026-11-21.jsonl", [record(1), record(2)])
    (garbage / "landing" / "mobile-2026-11-21.jsonl").write_text("{oops\n[]\n")
    with pytest.raises(ValidationFailed, match="2 of 4 lines invalid.*mobile-2026-11-21.jsonl"):
        cycle(garbage, "b1")


PLANNER = """\
workload_id: planner
experts:
  - {name: banking, description: "Money"}
  - {name: calendar, description: "Meetings"}
decision: {kind: tool_call, tool: route_to, argument: expert}
"""


def test_each_record_is_checked_against_its_own_workload(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workloads in one batch, each with its own experts; a record of a workload without a
    file is quarantined as such; a record whose workload file fails its checks is quarantined
    with the file and the problem, and the other workloads' records are stored."""
    workloads = tmp_path / "workloads"
    workloads.mkdir()
    (workloads / "planner.yaml").write_text(PLANNER)
    monkeypatch.setenv("FLYWHEEL_WORKLOADS", str(workloads))
    home = tmp_path / "home"
    deliver(home, "a.jsonl", [
        record(1), record(2, expert="calendar"),  # calendar: not a router expert
        record(3, workload_id="planner"), record(4, workload_id="planner", expert="calendar"),
        record(5, workload_id="planner", expert="travel"),  # travel: not a planner expert
        record(6, workload_id="billing"),  # no such workload file
    ])
    result = cycle(home, "b1", max_invalid_fraction=1.0)
    assert balanced(result) and (result.stored, result.quarantined) == (3, 3)
    stored = load_store(home).set_index("id")
    assert stored["workload_id"].to_dict() == {"r1": "router", "r3": "planner", "r4": "planner"}
    reasons = pd.read_parquet(home / "quarantine" / "b1-validate.parquet").set_index("id")
    assert reasons.loc["r2", "reason"] == reasons.loc["r5", "reason"] == "route_in_experts"
    assert set(reasons.loc["r6", "reason"].split("; ")) == {"route_in_experts", "workload_known"}
    assert result.expectations["workload_known"].unexpected_count == 1

    # one list for every workload, as before workload files
    other = tmp_path / "other"
    deliver(other, "a.jsonl", [record(7, workload_id="billing"), record(8, expert="calendar")])
    assert cycle(other, "b1", experts=["banking"], max_invalid_fraction=1.0).stored == 1

    # a workload file broken after its records were staged: only that workload's records are
    # quarantined, with the file and the problem; the other workloads' records are stored
    broken = tmp_path / "broken"
    deliver(broken, "a.jsonl", [record(9, workload_id="planner"), record(11)])
    ingest(IngestConfig(home=str(broken), run_id="b1"))  # staged while the file was good
    (workloads / "planner.yaml").write_text(PLANNER.replace("calendar", "banking"))
    result = validate(ValidateConfig(home=str(broken), run_id="b1", max_invalid_fraction=1.0))
    assert (result.stored, result.quarantined) == (1, 1)
    assert list(load_store(broken)["id"]) == ["r11"]
    reason = pd.read_parquet(broken / "quarantine" / "b1-validate.parquet")["reason"].item()
    assert "workload_file_valid" in reason and "planner.yaml" in reason
    assert "duplicate expert names: banking" in reason
    # ingest, which reads each record's decision as its workload's file says, does the same
    deliver(broken, "b.jsonl", [record(10, workload_id="planner"), record(12)])
    staged = ingest(IngestConfig(home=str(broken), run_id="b2"))
    assert (staged.records_parsed, staged.quarantined) == (1, 1)
    reason = pd.read_parquet(broken / "quarantine" / "b2-ingest.parquet")["reason"].item()
    assert "planner.yaml" in reason and "duplicate expert names: banking" in reason
    (workloads / "planner.yaml").write_text(PLANNER)


def test_load_store_filters_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    workloads = tmp_path / "workloads"
    workloads.mkdir()
    (workloads / "planner.yaml").write_text(PLANNER)
    monkeypatch.setenv("FLYWHEEL_WORKLOADS", str(workloads))
    deliver(tmp_path, "a.jsonl", [
        record(1, timestamp="2026-11-19T10:00:00Z"),
        record(2, timestamp="2026-11-20T10:00:00Z"),
        record(3, timestamp="2026-11-21T10:00:00Z", workload_id="planner"),
    ])
    ingest(IngestConfig(home=str(tmp_path), run_id="b1"))
    assert main(["--home", str(tmp_path)]) == 0  # the newest batch by default
    assert "validate b1: 3 records in" in capsys.readouterr().out
    window = load_store(tmp_path, workload_id="router", start="2026-11-20", end="2026-11-22")
    assert list(window["id"]) == ["r2"]
    assert list(load_store(tmp_path, start="2026-11-20T00:00:00+00:00")["id"]) == ["r2", "r3"]
    with pytest.raises(FileNotFoundError, match="flywheel ingest"):
        validate(ValidateConfig(home=str(tmp_path), run_id="nope"))


def test_partitioned_validation_and_store_match_one_pass(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Validating in GX partitions of 4 rows (ids with two contents included) and writing the
    store in chunks of 3 give the same quarantine, store and raw texts as one pass."""
    import pyarrow.parquet as pq

    import tasks.ingest.validate as validate_module

    items = [record(i) for i in range(14)]
    items += [record(3, expert="travel"), record(9, latency_ms=-5.0),  # same id, other content
              record(20, expert="payroll"), record(2)]  # bad route; an exact copy
    original_write = validate_module._write_records_part

    def small_chunks(frame, staged_path, path, chunk_rows=50_000):
        return original_write(frame, staged_path, path, chunk_rows=3)

    def run(home: Path) -> tuple[ValidateResult, pd.DataFrame, pd.DataFrame, dict]:
        deliver(home, "a.jsonl", items)
        result = cycle(home, "b1", max_invalid_fraction=0.9)
        store = pd.read_parquet(home / "store" / "records" / "part-b1.parquet")
        quarantined = pd.read_parquet(result.quarantine_path).sort_values("line")
        return (result, store, quarantined.reset_index(drop=True),
                json.loads(Path(result.validation_path).read_text()))

    whole, whole_store, whole_q, whole_json = run(tmp_path / "whole")
    monkeypatch.setattr(validate_module, "SUITE_CHUNK_ROWS", 4)
    monkeypatch.setattr(validate_module, "_write_records_part", small_chunks)
    parts, parts_store, parts_q, parts_json = run(tmp_path / "parts")

    assert whole.model_dump(exclude={"validation_path", "validation_html_path",
                                     "quarantine_path", "store_part"}) == parts.model_dump(
        exclude={"validation_path", "validation_html_path", "quarantine_path", "store_part"})
    assert (whole.stored, whole.duplicates, whole.quarantined) == (12, 1, 5)
    assert whole.expectations["id_unique"].unexpected_count == 4  # r3 and r9, twice each
    pd.testing.assert_frame_equal(parts_store, whole_store)
    pd.testing.assert_frame_equal(parts_q, whole_q)
    assert "partitions" not in whole_json and len(parts_json["partitions"]) == 5  # ceil(17 / 4)
    assert parts_json["success"] is whole_json["success"] is False
    staged = pq.read_table(tmp_path / "parts" / "staging" / "b1" / "records.parquet").to_pandas()
    raw_by_line = dict(zip(staged["line"], staged["raw"], strict=True))
    assert all(raw_by_line[line] == raw for line, raw in zip(parts_store["line"],
                                                             parts_store["raw"], strict=True))
    assert all(raw_by_line[line] == raw for line, raw in zip(parts_q["line"], parts_q["raw"],
                                                             strict=True))


def test_the_store_id_index_follows_the_parts(tmp_path: Path) -> None:
    """Ids are looked up in ``_ids.arrow`` beside the parts; lost, corrupt, or behind a part
    rewritten or removed, it is brought up to date from the parts themselves."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.ingest.validate import IdIndex

    deliver(tmp_path, "day1.jsonl", [record(1), record(2)])
    cycle(tmp_path, "b1")
    deliver(tmp_path, "day2.jsonl", [record(3)])
    cycle(tmp_path, "b2")
    records_dir = tmp_path / "store" / "records"
    index = records_dir / IdIndex.NAME
    assert sorted(IdIndex(records_dir).table["id"].to_pylist()) == ["r1", "r2", "r3"]

    index.write_bytes(b"garbage")  # corrupt: rebuilt
    deliver(tmp_path, "day3.jsonl", [record(1)])
    assert cycle(tmp_path, "b3").duplicates == 1

    # r2 removed from its part behind the index's back: a re-delivered r2 is new again
    part = records_dir / "part-b1.parquet"
    table = pq.read_table(part)
    pq.write_table(table.filter(pc.not_equal(table["id"], "r2")), part)
    deliver(tmp_path, "day4.jsonl", [record(2)])
    fourth = cycle(tmp_path, "b4")
    assert (fourth.stored, fourth.duplicates) == (1, 0)
    (records_dir / "part-b2.parquet").unlink()  # a part removed: its ids are gone
    assert "r3" not in IdIndex(records_dir).table["id"].to_pylist()
    assert sorted(load_store(tmp_path)["id"]) == ["r1", "r2"]


def test_pending_feedback_is_worked_out_again_without_its_file(tmp_path: Path) -> None:
    """``pending.parquet`` carries the waiting events from run to run; a store without one
    (written by older code, or the file lost) works them out from the history once."""
    deliver(tmp_path, "day1.jsonl", [record(1)])
    deliver(tmp_path, "feedback-day1.jsonl", [event(9, -1, "2026-11-20T12:00:00Z"),
                                              event(8, 1, "2026-11-20T12:00:00Z")])
    assert cycle(tmp_path, "b1").feedback_pending == 2
    (tmp_path / "store" / "feedback" / "pending.parquet").unlink()
    deliver(tmp_path, "day2.jsonl", [record(9)])
    second = cycle(tmp_path, "b2")
    assert (second.stored, second.feedback_merged, second.feedback_pending) == (1, 1, 1)
    assert load_store(tmp_path).set_index("id").loc["r9", "rating"] == -1
    pending = pd.read_parquet(tmp_path / "store" / "feedback" / "pending.parquet")
    assert list(pending["id"]) == ["r8"]


# --------------------------------------------------------------------------------------------
# every staged batch is stored, exactly once, whatever was killed or ran beside


def _traffic(home: Path) -> None:
    """Two deliveries: records with inline and late feedback, feedback waiting for a record of
    the second delivery, and a record of the first delivered again in the second."""
    deliver(home, "day1.jsonl", [record(i, feedback={"rating": 1}) if i % 3 == 0 else record(i)
                                 for i in range(1, 41)])
    deliver(home, "feedback-day1.jsonl", [event(i, -1, "2026-11-20T12:00:00Z")
                                          for i in (2, 5, 45, 55)])


def _traffic_day2(home: Path) -> None:
    deliver(home, "day2.jsonl", [record(i) for i in range(41, 51)] + [record(7)])
    deliver(home, "feedback-day2.jsonl", [event(i, 1, "2026-11-21T08:00:00Z") for i in (3, 41)])


def _store_state(home: Path) -> dict[str, Any]:
    """What the store holds, independent of which run wrote which part."""
    from tasks.ingest.store import feedback_schema, read_parts, record_schema

    records = read_parts(home / "store" / "records", record_schema())
    events = read_parts(home / "store" / "feedback", feedback_schema())
    keys = sorted({(e.id, str(e.timestamp), e.rating, e.source) for e in events.itertuples()})
    pending = pd.read_parquet(home / "store" / "feedback" / "pending.parquet")
    store = load_store(home)
    return {"record_ids": sorted(records["id"]),  # a record stored twice shows twice
            "ratings": store.set_index("id")["rating"].astype(object).where(
                store.set_index("id")["rating"].notna(), None).to_dict(),
            "events": keys, "pending": sorted(pending["id"])}


def test_every_waiting_batch_is_stored_oldest_first(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`flywheel ingest; flywheel ingest; flywheel validate` stores both batches."""
    from tasks.ingest.validate import validate_waiting

    _traffic(tmp_path)
    ingest(IngestConfig(home=str(tmp_path), run_id="b-first"))
    _traffic_day2(tmp_path)
    ingest(IngestConfig(home=str(tmp_path), run_id="a-second"))  # sorts first by name
    assert main(["--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index("validate b-first") < out.index("validate a-second")
    assert len(set(_store_state(tmp_path)["record_ids"])) == 50
    assert main(["--home", str(tmp_path)]) == 0  # nothing waits: nothing done twice
    assert "no staged batch waits" in capsys.readouterr().out
    run = validate_waiting(ValidateConfig(home=str(tmp_path), run_id="a-second"))
    assert [b.run_id for b in run.batches] == ["a-second"]  # its own batch, stored before
    assert run.stored == 10 and run.records_in == 11


def test_two_validations_at_once_store_each_batch_once(tmp_path: Path) -> None:
    import threading

    from tasks.ingest.validate import validate_waiting

    reference = tmp_path / "reference"
    for home in (tmp_path / "raced", reference):
        for n in range(3):
            deliver(home, f"part{n}.jsonl", [record(i) for i in range(n * 20, n * 20 + 20)])
            ingest(IngestConfig(home=str(home), run_id=f"b{n}"))
    validate_waiting(ValidateConfig(home=str(reference)))
    runs: list[Any] = []
    threads = [threading.Thread(target=lambda: runs.append(validate_waiting(
        ValidateConfig(home=str(tmp_path / "raced"))))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(b.run_id for run in runs for b in run.batches) == ["b0", "b1", "b2"]
    assert _store_state(tmp_path / "raced") == _store_state(reference)


#: Run in a child process: validate every waiting batch, killed (SIGKILL) just before the
#: ``kill_at``-th file of the home is renamed into place (its hidden temporary file written).
KILLED_VALIDATION = """
import os, signal, sys
home, kill_at = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if str(dst).startswith(home):
        seen[0] += 1
        if seen[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from tasks.ingest.validate import ValidateConfig, validate_waiting
validate_waiting(ValidateConfig(home=home))
print("WRITES", seen[0])
"""


def test_a_validation_killed_at_each_write_loses_nothing(tmp_path: Path) -> None:
    """kill -9 at every write of a validation (after the write to its hidden file, before the
    rename); the next ordinary cycle (ingest, then validate) leaves the store exactly as a run
    never killed: every record once, every feedback event, the same pending events."""
    import signal
    import subprocess
    import sys

    from tasks.ingest.validate import validate_waiting

    def killed(home: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", KILLED_VALIDATION, str(home), str(kill_at)],
                              capture_output=True, text=True, check=False)

    reference = tmp_path / "reference"
    _traffic(reference)
    ingest(IngestConfig(home=str(reference), run_id="b1"))
    counted = killed(reference, 0)  # not killed: counts the writes
    assert counted.returncode == 0, counted.stderr
    writes = int(counted.stdout.split("WRITES")[1])
    assert writes >= 8  # validation.json/html, records part and index, feedback part, ...
    _traffic_day2(reference)
    ingest(IngestConfig(home=str(reference), run_id="b2"))
    validate_waiting(ValidateConfig(home=str(reference)))
    expected = _store_state(reference)
    assert len(expected["record_ids"]) == 50 and expected["pending"] == ["r55"]

    for kill_at in range(1, writes + 1):
        home = tmp_path / f"killed-at-{kill_at}"
        _traffic(home)
        ingest(IngestConfig(home=str(home), run_id="b1"))
        run = killed(home, kill_at)
        assert run.returncode == -signal.SIGKILL, (kill_at, run.stderr[-2000:])
        assert list(home.rglob(".*.tmp")), kill_at  # killed mid-write: its hidden file is there
        _traffic_day2(home)
        ingest(IngestConfig(home=str(home), run_id="b2"))
        after = validate_waiting(ValidateConfig(home=str(home)))
        assert [b.run_id for b in after.batches] == ["b1", "b2"], kill_at
        assert after.leftovers_removed >= 1 and not list(home.rglob(".*.tmp")), kill_at
        assert _store_state(home) == expected, kill_at


def test_validate_says_in_one_line_what_is_missing(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.cli import main as flywheel

    assert flywheel(["validate", "--home", str(tmp_path)]) == 0  # an empty home: nothing waits
    assert "no staged batch waits" in capsys.readouterr().out
    assert flywheel(["validate", "--home", str(tmp_path), "--run-id", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flywheel validate: error: staging batch") and "flywheel ingest" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert flywheel(["--debug", "validate", "--home", str(tmp_path), "--run-id", "nope"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_unknown_settings_in_a_config_file_are_refused_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "validate.yaml"
    settings.write_text("max_invalid_fractoin: 0.5\nmax_query_chars: 100\n")
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(tmp_path), "--config", str(settings)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) 'max_invalid_fractoin'" in err and "max_invalid_fraction" in err


def test_batches_validated_before_stored_markers_are_not_validated_again(tmp_path: Path) -> None:
    """A home written by code that kept no ``_stored.json``: its validated batches (those with a
    validation.json) are adopted as stored once; a staged batch never validated is stored."""
    from tasks.ingest.validate import ADOPTED_FLAG, STORED_MARKER, validate_waiting

    deliver(tmp_path, "a.jsonl", [record(1), record(2)])
    cycle(tmp_path, "old")
    (tmp_path / "staging" / "old" / STORED_MARKER).unlink()  # as the earlier code left it
    (tmp_path / "staging" / ADOPTED_FLAG).unlink(missing_ok=True)
    deliver(tmp_path, "b.jsonl", [record(3)])
    ingest(IngestConfig(home=str(tmp_path), run_id="new"))
    run = validate_waiting(ValidateConfig(home=str(tmp_path)))
    assert [b.run_id for b in run.batches] == ["new"]
    assert (tmp_path / "staging" / "old" / STORED_MARKER).exists()
    # from now on only the marker counts: a batch whose validation died after its
    # validation.json waits for the next run
    deliver(tmp_path, "c.jsonl", [record(4)])
    ingest(IngestConfig(home=str(tmp_path), run_id="died"))
    (tmp_path / "staging" / "died" / "validation.json").write_text("{}")
    assert [b.run_id for b in validate_waiting(ValidateConfig(home=str(tmp_path))).batches] \
        == ["died"]
    assert sorted(load_store(tmp_path)["id"]) == ["r1", "r2", "r3", "r4"]
