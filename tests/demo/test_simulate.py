"""Tests of the traffic simulator (tasks/demo/simulate.py): the logs it lands are what ingestion,
validation and curation are built against, so their statistics are part of the contract."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.core.records import RecordError, query_of, route_of
from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT
from tasks.demo.simulate import CONFUSABLE, MALFORMED_KINDS, SimulateConfig, simulate


def _strict(line: str) -> dict[str, Any]:
    """Parse a log line the way validation must: raise on anything off-contract."""
    record = json.loads(line)
    if not isinstance(record.get("id"), str):
        raise RecordError("id missing")
    datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    if isinstance(record["latency_ms"], bool) or not isinstance(record["latency_ms"], int | float):
        raise RecordError("latency_ms is not a number")
    feedback = record.get("feedback")
    if feedback is not None and (type(feedback["rating"]) is not int
                                 or feedback["rating"] not in (1, -1)):
        raise RecordError("rating is not +1/-1")
    query_of(record["request"])
    if route_of(record["response"]) not in EXPERTS:
        raise RecordError("unknown expert")
    return record


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One two-day simulation of 5,000 records, parsed once for all the statistical tests."""
    import pandas as pd

    home = tmp_path_factory.mktemp("home")
    result = simulate(SimulateConfig(days=2, records_per_day=2500, seed=7, home=home))
    logs = [Path(f) for f in result.files if "-feedback-" not in Path(f).name]
    feedback = [Path(f) for f in result.files if "-feedback-" in Path(f).name]
    good: list[dict[str, Any]] = []
    bad: list[str] = []
    texts: list[str] = []
    for path in logs:
        for line in _lines(path):
            texts.append(line)
            try:
                good.append(_strict(line))
            except (RecordError, ValueError, KeyError, TypeError, IndexError):
                bad.append(line)
    events = [json.loads(line) for path in feedback for line in _lines(path)]
    truth = pd.read_parquet(result.truth_path).set_index("id")
    return {"home": home, "result": result, "logs": logs, "good": good, "bad": bad,
            "texts": texts, "events": events, "truth": truth}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def files(home: Path, seed: int) -> dict[str, bytes]:
        simulate(SimulateConfig(days=2, records_per_day=200, seed=seed, home=home))
        return {p.relative_to(home).as_posix(): p.read_bytes()
                for p in sorted(home.rglob("*")) if p.is_file()}

    first = files(tmp_path / "a", 1)
    assert first == files(tmp_path / "b", 1)
    assert first == files(tmp_path / "a", 1)  # a rerun overwrites with the same content
    other = files(tmp_path / "c", 2)
    logs = [name for name in first if name.startswith("landing/router-2026")]
    assert len(logs) == 2 and all(other[name] != first[name] for name in logs)


def test_teacher_accuracy_matches_config(run: dict[str, Any]) -> None:
    truth = run["truth"]
    routes = {r["id"]: route_of(r["response"]) for r in run["good"]}
    hits = sum(truth.loc[i, "gold_expert"] == route for i, route in routes.items())
    accuracy = hits / len(routes)
    assert abs(accuracy - 0.96) <= 0.015
    assert run["result"].teacher_accuracy_observed == pytest.approx(accuracy, abs=1e-4)


def test_teacher_errors_fall_mostly_on_confusable_experts(run: dict[str, Any]) -> None:
    truth = run["truth"]
    wrong = truth[~truth.teacher_correct]
    assert len(wrong) > 50
    confusable = [route in CONFUSABLE[gold] for gold, route in
                  zip(wrong.gold_expert, wrong.teacher_route, strict=True)]
    assert sum(confusable) / len(confusable) >= 0.65
    oos = truth.gold_expert == FALLBACK_EXPERT
    assert 0.03 <= oos.mean() <= 0.12  # realistic out-of-scope share
    assert (~truth.teacher_correct[oos]).mean() > 2 * (~truth.teacher_correct[~oos]).mean()


def test_feedback_is_sparse_and_noisy(run: dict[str, Any]) -> None:
    truth = run["truth"]
    ratings = {r["id"]: r["feedback"]["rating"] for r in run["good"] if "feedback" in r}
    ratings.update({e["id"]: e["rating"] for e in run["events"]})
    records = {r["id"] for r in run["good"]}
    assert abs(len(ratings) / len(records) - 0.15) <= 0.02
    correct = truth.loc[list(ratings), "teacher_correct"]
    negative = [ratings[i] == -1 for i in ratings]
    neg_right = sum(n for n, c in zip(negative, correct, strict=True) if c) / correct.sum()
    neg_wrong = sum(n for n, c in zip(negative, correct, strict=True) if not c) / (~correct).sum()
    assert neg_right == pytest.approx(0.38, abs=0.06)
    assert neg_wrong > neg_right + 0.25
    result = run["result"]
    assert result.negatives == sum(negative)
    assert result.feedback_inline + result.feedback_late == len(ratings)
    assert len(run["events"]) == result.feedback_late
    assert result.feedback_late == pytest.approx(0.3 * len(ratings), rel=0.25)


def test_well_formed_records_follow_the_contract(run: dict[str, Any]) -> None:
    result = run["result"]
    ids = Counter(r["id"] for r in run["good"])
    assert len(ids) == result.records
    assert sum(ids.values()) - len(ids) == result.duplicates
    record = run["good"][0]
    assert {"schema_version", "id", "timestamp", "workload_id", "client_id", "model", "request",
            "response", "latency_ms", "ttft_ms", "usage"} <= record.keys()
    for r in run["good"]:
        assert r["timestamp"].endswith("Z")
        assert 0 < r["ttft_ms"] < r["latency_ms"]
        assert r["usage"]["total_tokens"] == (r["usage"]["prompt_tokens"]
                                              + r["usage"]["completion_tokens"])
    days = sorted({r["timestamp"][:10] for r in run["good"]})
    assert days == ["2026-11-20", "2026-11-21"]
    assert [p.name for p in run["logs"]] == ["router-2026-11-20.jsonl", "router-2026-11-21.jsonl"]
    latencies = sorted(r["latency_ms"] for r in run["good"])
    assert 1500 < latencies[len(latencies) // 2] < 2100


def test_malformed_and_duplicate_lines_are_present(run: dict[str, Any]) -> None:
    result, truth = run["result"], run["truth"]
    assert len(run["bad"]) == result.malformed > 0
    assert set(truth.malformed.dropna()) == set(MALFORMED_KINDS)  # every kind of breakage
    counts = Counter(run["texts"])
    assert sum(c - 1 for c in counts.values()) == result.duplicates > 0
    assert result.duplicates == pytest.approx(0.01 * result.records, rel=0.5)


def test_late_feedback_refers_to_earlier_records(run: dict[str, Any]) -> None:
    stamps = {r["id"]: r["timestamp"] for r in run["good"]}
    assert run["events"]
    for event in run["events"]:
        assert event["kind"] == "feedback" and event["source"] == "user"
        assert event["rating"] in (1, -1)
        assert event["timestamp"] > stamps[event["id"]]


def test_gold_labels_stay_outside_landing(run: dict[str, Any]) -> None:
    home, result = run["home"], run["result"]
    truth_path = Path(result.truth_path)
    assert truth_path.parent == home / "simulator" and truth_path.is_file()
    assert all(Path(f).parent == home / "landing" for f in result.files)
    assert not any('"gold_expert"' in text or '"intent"' in text for text in run["texts"])
    assert set(run["truth"].columns) >= {"gold_expert", "teacher_route", "intent", "clinc_split"}


@pytest.mark.parametrize("file_format", ["jsonl.gz", "parquet"])
def test_other_formats_hold_the_same_lines(tmp_path: Path, file_format: str) -> None:
    import pyarrow.parquet as pq

    base = SimulateConfig(days=1, records_per_day=300, seed=3, home=tmp_path / "plain")
    plain = simulate(base)
    other = simulate(base.model_copy(update={"file_format": file_format,
                                             "home": tmp_path / file_format}))
    assert [Path(f).name for f in other.files] == [
        Path(f).name.replace(".jsonl", "." + file_format) for f in plain.files]
    for mine, theirs in zip(other.files, plain.files, strict=True):
        if file_format == "parquet":
            lines = pq.read_table(mine).column("record").to_pylist()
        else:
            lines = gzip.decompress(Path(mine).read_bytes()).decode("utf-8").splitlines()
        assert lines == _lines(Path(theirs))


def test_cli_main_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.demo.simulate import main

    assert main(["--days", "1", "--records-per-day", "50", "--home", str(tmp_path),
                 "--client-ids", '["a", "b"]']) == 0
    out = capsys.readouterr().out
    assert "records" in out and "teacher accuracy" in out
    assert (tmp_path / "landing" / "router-2026-11-20.jsonl").is_file()
    with pytest.raises(SystemExit):
        main(["--days", "0", "--home", str(tmp_path)])
