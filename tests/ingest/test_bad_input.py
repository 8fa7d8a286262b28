"""A corpus of bad input: no kind of bad line is lost, and none stops the good records around it.

Every case writes a landing folder where 2 good records come before and 2 after the bad line(s)
(for whole-file failures: a second, good file beside the bad one), runs ingest then validate, and
checks that the good records are stored, the bad input is quarantined with a specific reason (or,
for input judged acceptable, stored correctly), and the counts balance at both stages.

Decisions this corpus pins down:

* CRLF line ends are accepted (the ``\\r`` is stripped); a UTF-8 BOM at the start of a JSONL file
  is accepted (stripped).
* Blank lines are ignored: not counted in ``lines_in``, never quarantined.
* A timestamp without a timezone is read as UTC and accepted; a timestamp that does not parse, is
  before 2000, or is more than a day in the future is quarantined at validation.
* A NUL character written as the JSON escape ``\\u0000`` is valid JSON text and is stored as is;
  a raw NUL byte in the line is not valid JSON and is quarantined.
* Feedback for an id not stored yet stays pending (in the history and ``pending.parquet``).
* Whole-file failures (not gzip, truncated gzip, not Parquet, foreign Parquet schema) quarantine
  a row whose reason names the file; the other files of the delivery are still ingested.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.records import make_request, make_response
from tasks.ingest.landing import IngestConfig, ingest
from tasks.ingest.store import load_store
from tasks.ingest.validate import ValidateConfig, build_suite, validate

GOOD_IDS = ("g1", "g2", "g3", "g4")
BAD_FILE = "router.jsonl"


def record(rid: str, expert: str = "banking", query: str | None = None, **fields: Any
           ) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema_version": 1, "id": rid, "timestamp": "2026-11-20T09:00:00.000Z",
        "workload_id": "router", "client_id": "hr-portal", "model": "teacher-70b",
        "request": make_request(query or f"how do I do thing {rid}?"),
        "response": make_response(expert, f"call-{rid}"), "latency_ms": 1200.0,
        "ttft_ms": 300.0,
    }
    rec.update(fields)
    return rec


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def without(rid: str, *keys: str) -> bytes:
    rec = record(rid)
    for key in keys:
        rec.pop(key)
    return line(rec)


def edited(rid: str, edit: Callable[[dict[str, Any]], None]) -> bytes:
    rec = copy.deepcopy(record(rid))
    edit(rec)
    return line(rec)


def good(*ids: str) -> list[bytes]:
    return [line(record(i)) for i in ids]


def surrounded(bad: list[bytes], sep: bytes = b"\n") -> bytes:
    """2 good records, the bad lines, 2 good records."""
    return sep.join([*good("g1", "g2"), *bad, *good("g3", "g4")]) + sep


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@dataclass
class Case:
    """``files`` is the landing folder; ``outcome`` what must happen to the bad input."""

    name: str
    files: dict[str, bytes]
    outcome: str  # "quarantined", "stored", "duplicate", "pending", "ignored"
    reason: str = ""  # substring of the quarantine reason (case-insensitive)
    bad_file: str = BAD_FILE
    bad_lines: tuple[int, ...] = (3,)  # line numbers of the bad input in bad_file
    stored: dict[str, str] = field(default_factory=dict)  # id -> expected query, when accepted
    min_quarantined: int = 1


def jsonl_case(name: str, bad: list[bytes] | bytes, outcome: str = "quarantined",
               reason: str = "", **kw: Any) -> Case:
    bad = [bad] if isinstance(bad, bytes) else bad
    kw.setdefault("bad_lines", tuple(range(3, 3 + len(bad))))
    return Case(name, {BAD_FILE: surrounded(bad)}, outcome, reason, **kw)


def whole_file_case(name: str, filename: str, payload: bytes, reason: str) -> Case:
    return Case(name, {filename: payload, "good.jsonl": surrounded([])}, "quarantined", reason,
                bad_file=filename, bad_lines=())


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(rec: dict[str, Any]) -> None:
        target = rec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _tool_call(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["response"]["choices"][0]["message"]["tool_calls"][0]["function"]


def _bad_args(rec: dict[str, Any]) -> None:
    _tool_call(rec)["arguments"] = "{expert: banking"


def _unknown_function(rec: dict[str, Any]) -> None:
    _tool_call(rec)["name"] = "transfer_money"


def _no_user_message(rec: dict[str, Any]) -> None:
    rec["request"]["messages"] = [m for m in rec["request"]["messages"] if m["role"] != "user"]


def _event(rid: str, rating: Any = 1) -> bytes:
    return line({"kind": "feedback", "id": rid, "timestamp": "2026-11-20T10:00:00Z",
                 "rating": rating, "source": "user"})


def _parquet_records(**bad: Any) -> pa.Table:
    """The good records and one bad one (``bad`` fields) as a Parquet table of columns, the
    nested parts as JSON text, in the corpus's order (2 good, the bad one, 2 good)."""
    rows = [record(i) for i in ("g1", "g2")] + [record("b1", **bad)] + [
        record(i) for i in ("g3", "g4")]
    return pa.Table.from_pylist([
        {k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()} for row in rows])


DEPTH = 10_000
MB_QUERY = "x" * (1 << 20)
foreign = pa.table({"sku": [1, 2], "price": [9.5, 3.0]})

CASES: list[Case] = [
    # --- not JSON at all
    jsonl_case("truncated_json", line(record("b1"))[:80], reason="invalid JSON"),
    jsonl_case("bare_string", b'"just a string"', reason="not a JSON object (got str)"),
    jsonl_case("bare_number", b"42", reason="not a JSON object (got int)"),
    jsonl_case("bare_array", b"[1, 2, 3]", reason="not a JSON object (got list)"),
    jsonl_case("bare_null", b"null", reason="not a JSON object (got NoneType)"),
    jsonl_case("invalid_utf8", b'{"id": "b1", "query": "caf\xe9"}', reason="invalid UTF-8"),
    jsonl_case("raw_nul_in_string", line(record("b1")).replace(b"thing b1", b"thing\x00b1"),
               reason="invalid JSON: invalid control character"),
    jsonl_case("raw_nul_in_line", line(record("b1")) + b"\x00", reason="invalid JSON"),
    jsonl_case("deep_array_10000", b"[" * DEPTH + b"]" * DEPTH, reason="nested too deeply"),
    jsonl_case("deep_object_10000",
               b'{"id": "b1", "x": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}",
               reason="nested too deeply"),
    # --- wrong types (ingest: shape)
    jsonl_case("id_as_number", line(record("b1", id=17)), reason="'id' must be a string"),
    # --- one contract with the HTTP intake, which answers these with 422
    jsonl_case("empty_id", line(record("b1", id="")), reason="'id' is empty or blank"),
    jsonl_case("blank_id", line(record("b1", id="   ")), reason="'id' is empty or blank"),
    jsonl_case("late_feedback_blank_id", _event(" \t"), reason="'id' is empty or blank"),
    jsonl_case("nan_ttft", line(record("b1")).replace(b'"ttft_ms": 300.0', b'"ttft_ms": NaN'),
               reason="non-standard JSON constant NaN"),
    jsonl_case("nan_rating", line(record("b1", feedback={"rating": "R"})).replace(
        b'"R"', b"NaN"), reason="non-standard JSON constant NaN"),
    jsonl_case("infinite_latency", line(record("b1")).replace(b"1200.0", b"-Infinity"),
               reason="non-standard JSON constant -Infinity"),
    Case("parquet_nan_latency", {"router.parquet": parquet_bytes(_parquet_records(
        latency_ms=float("nan")))}, "quarantined", "non-standard JSON constant nan at latency_ms",
         bad_file="router.parquet", bad_lines=(3,)),
    jsonl_case("latency_as_string", line(record("b1", latency_ms="12 ms")),
               reason="latency_ms must be a number"),
    jsonl_case("rating_as_string", line(record("b1", feedback={"rating": "thumbs-up"})),
               reason="feedback.rating must be a number"),
    jsonl_case("messages_not_a_list", edited("b1", _set(("request", "messages"), "hello")),
               reason="request.messages is missing or not a list"),
    jsonl_case("content_as_dict",
               edited("b1", _set(("request", "messages", 1, "content"), {"text": "hi"})),
               reason="user message has no text content"),
    jsonl_case("feedback_not_object", line(record("b1", feedback=[1])),
               reason="feedback must be an object"),
    jsonl_case("schema_version_2", line(record("b1", schema_version=2)),
               reason="unsupported schema_version"),
    jsonl_case("unknown_kind", line(record("b1", kind="metrics")), reason="unknown kind"),
    # --- missing fields
    jsonl_case("missing_id", without("b1", "id"), reason="id_not_null"),
    jsonl_case("missing_timestamp", without("b1", "timestamp"), reason="timestamp_parseable"),
    jsonl_case("missing_request", without("b1", "request"),
               reason="request.messages is missing"),
    jsonl_case("missing_response", without("b1", "response"),
               reason="response.choices[0].message is missing"),
    jsonl_case("missing_messages", edited("b1", lambda r: r["request"].pop("messages")),
               reason="request.messages is missing"),
    jsonl_case("missing_user_message", edited("b1", _no_user_message),
               reason="no user message"),
    jsonl_case("missing_workload_id", without("b1", "workload_id"),
               reason="workload_id_not_null"),
    jsonl_case("missing_client_id", without("b1", "client_id"), reason="client_id_not_null"),
    # --- values (validate: expectations)
    jsonl_case("empty_query", line(record("b1", query=" ")), reason="query_non_empty"),
    jsonl_case("query_1mb", line(record("b1", query=MB_QUERY)), reason="query_length"),
    jsonl_case("rating_0", line(record("b1", feedback={"rating": 0})), reason="rating_in_set"),
    jsonl_case("rating_2", line(record("b1", feedback={"rating": 2})), reason="rating_in_set"),
    jsonl_case("route_not_expert", line(record("b1", expert="payroll")),
               reason="route_in_experts"),
    jsonl_case("negative_latency", line(record("b1", latency_ms=-5.0)),
               reason="latency_ms_in_range"),
    jsonl_case("tool_call_non_json_arguments", edited("b1", _bad_args),
               reason="arguments are not valid JSON"),
    jsonl_case("tool_call_unknown_function", edited("b1", _unknown_function),
               reason="neither a route_to tool call nor text content"),
    jsonl_case("timestamp_future", line(record("b1", timestamp="2999-01-01T00:00:00Z")),
               reason="timestamp_in_bounds"),
    jsonl_case("timestamp_before_2000", line(record("b1", timestamp="1999-12-31T23:59:59Z")),
               reason="timestamp_in_bounds"),
    jsonl_case("timestamp_unparseable", line(record("b1", timestamp="yesterday at noon")),
               reason="timestamp_parseable"),
    jsonl_case("duplicate_id_different_content",
               [line(record("b1")), line(record("b1", expert="travel"))], reason="id_unique",
               min_quarantined=2),
    jsonl_case("late_feedback_bad_rating", _event("g1", rating=0),
               reason="rating must be +1 or -1"),
    # --- accepted input
    jsonl_case("timestamp_without_timezone", line(record("b1", timestamp="2026-11-20T09:00:00")),
               "stored", stored={"b1": "how do I do thing b1?"}),
    jsonl_case("escaped_nul_in_string", line(record("b1", query="thing\u0000b1")), "stored",
               stored={"b1": "thing\u0000b1"}),
    jsonl_case("exact_duplicate_line", [line(record("b1")), line(record("b1"))], "duplicate",
               stored={"b1": "how do I do thing b1?"}),
    jsonl_case("feedback_for_unknown_id", _event("nobody"), "pending"),
    jsonl_case("many_blank_lines", [b""] * 20_000 + [b"   \t"] * 100, "ignored"),
    Case("crlf_line_endings", {BAD_FILE: surrounded([line(record("b1"))], sep=b"\r\n")},
         "stored", stored={"b1": "how do I do thing b1?"}),
    Case("bom_at_start", {BAD_FILE: b"\xef\xbb\xbf" + surrounded([line(record("b1"))])},
         "stored", stored={"b1": "how do I do thing b1?", "g1": "how do I do thing g1?"}),
    Case("empty_file", {"empty.jsonl": b"", "good.jsonl": surrounded([])}, "ignored"),
    # --- whole files
    whole_file_case("jsonl_gz_not_gzip", "router.jsonl.gz",
                    surrounded([line(record("b1"))]),  # plain JSONL named .gz
                    "router.jsonl.gz"),
    whole_file_case("truncated_gzip", "router.jsonl.gz",
                    gz(surrounded([line(record(f"t{i}")) for i in range(200)]))[:300],
                    "router.jsonl.gz"),
    whole_file_case("parquet_not_parquet", "router.parquet", b"PAR1 this is not parquet",
                    "unreadable Parquet file router.parquet"),
    whole_file_case("parquet_foreign_schema", "router.parquet", parquet_bytes(foreign),
                    "foreign Parquet schema in router.parquet"),
]


def _quarantine(home: Path) -> pd.DataFrame:
    parts = [pd.read_parquet(p) for p in sorted((home / "quarantine").glob("*.parquet"))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["stage", "reason", "source_file", "line", "raw", "id"])


def test_corpus_is_large_and_named() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len(names) >= 30


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_kept_and_does_not_stop_good_records(case: Case, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir(parents=True)
    for name, payload in case.files.items():
        (landing / name).write_bytes(payload)

    staged = ingest(IngestConfig(home=str(tmp_path), run_id="b1"))
    assert staged.lines_in == staged.records_parsed + staged.feedback_events + staged.quarantined
    assert sorted(staged.files) == sorted(n for n, data in case.files.items())
    result = validate(ValidateConfig(home=str(tmp_path), run_id="b1", max_invalid_fraction=1.0))
    assert result.records_in == result.stored + result.duplicates + result.quarantined

    store = load_store(tmp_path).set_index("id")
    for rid in GOOD_IDS:  # the good records around the bad input are all stored
        assert store.loc[rid, "query"] == f"how do I do thing {rid}?"
        assert store.loc[rid, "route"] == "banking"
    quarantine = _quarantine(tmp_path)

    if case.outcome == "quarantined":
        bad = quarantine[quarantine["source_file"] == case.bad_file]
        if case.bad_lines:
            bad = bad[bad["line"].isin(case.bad_lines)]
        assert len(bad) >= case.min_quarantined, quarantine
        assert len(quarantine) == len(bad)  # nothing else was rejected
        for reason in bad["reason"]:
            assert reason and case.reason.lower() in reason.lower(), reason
        assert set(store.index) == set(GOOD_IDS)
    else:
        assert quarantine.empty, quarantine[["reason", "source_file", "line"]]
        assert set(store.index) == set(GOOD_IDS) | set(case.stored)
        for rid, query in case.stored.items():
            assert store.loc[rid, "query"] == query
            assert store.loc[rid, "raw"] and store.loc[rid, "timestamp"].year == 2026
        if case.outcome == "duplicate":
            assert result.duplicates == 1 and result.stored == 5
        if case.outcome == "pending":
            assert staged.feedback_events == 1 and result.feedback_pending == 1
            pending = pd.read_parquet(tmp_path / "store" / "feedback" / "pending.parquet")
            assert list(pending["id"]) == ["nobody"]
        if case.outcome == "ignored":
            assert staged.lines_in == 4 and staged.quarantined == 0

    # the validation result is kept as JSON and as a small self-contained HTML report
    assert result.validation_html_path is not None
    html = Path(result.validation_html_path).read_text()
    assert "<script" not in html and "http" not in html
    for name in build_suite(ValidateConfig()):
        assert name in html
