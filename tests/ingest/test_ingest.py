"""Ingestion: counts, quarantine reasons, formats, re-delivery and retries."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.records import make_request, make_response
from tasks.ingest.landing import (
    FEEDBACK_COLUMNS,
    MANIFEST_NAME,
    QUARANTINE_COLUMNS,
    STAGED_COLUMNS,
    IngestConfig,
    IngestResult,
    ingest,
    main,
)


def record(i: int, expert: str = "banking", query: str | None = None, **fields: Any
           ) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema_version": 1, "id": f"r{i}", "timestamp": f"2026-11-20T09:{i % 60:02d}:00.000Z",
        "workload_id": "router", "client_id": "hr-portal", "model": "teacher-70b",
        "request": make_request(query or f"how do I do thing number {i}?"),
        "response": make_response(expert, f"call-{i}"), "latency_ms": 1200.0 + i,
        "ttft_ms": 300.0,
    }
    rec.update(fields)
    return rec


def write_jsonl(path: Path, items: list[Any]) -> Path:
    """Write items (dicts as JSON, str/bytes verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [item if isinstance(item, bytes) else
             (item if isinstance(item, str) else json.dumps(item)).encode() for item in items]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run(home: Path, run_id: str) -> IngestResult:
    return ingest(IngestConfig(home=str(home), run_id=run_id))


def quarantine(home: Path, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(home / "quarantine" / f"{run_id}-ingest.parquet")


def test_deeply_nested_lines_are_quarantined_with_the_reason(tmp_path: Path) -> None:
    deep = json.dumps(record(2))[:-1] + ', "x": ' + "[" * 900 + "]" * 900 + "}"
    deeper = json.dumps(record(3))[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    write_jsonl(tmp_path / "landing" / "router-2026-11-20.jsonl",
                [record(1), deep, deeper, record(4)])
    result = run(tmp_path, "b1")
    assert (result.lines_in, result.records_parsed, result.quarantined) == (4, 2, 2)
    q = quarantine(tmp_path, "b1").set_index("line")
    assert q.loc[2, "reason"].startswith("nested more than 64 levels")
    assert q.loc[3, "reason"] == "invalid JSON: nested too deeply to parse"
    assert q.loc[3, "raw"] == deeper  # kept whole, to be looked at


def test_counts_and_quarantine_reasons(tmp_path: Path) -> None:
    missing_messages = record(5, request={"tools": []})
    bad_args = record(6)
    bad_args["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = (
        "{expert: banking")
    truncated = json.dumps(record(7))[:80]
    write_jsonl(tmp_path / "landing" / "router-2026-11-20.jsonl", [
        record(1), record(2, "travel"),
        truncated,                                       # line 3
        b'{"id": "r8", "query": "caf\xe9"}',             # line 4: Latin-1 byte, not UTF-8
        missing_messages,                                # line 5
        bad_args,                                        # line 6
        "[1, 2, 3]",                                     # line 7
        "   ",                                           # blank: not a line of data
        record(9, latency_ms="12 ms"),                   # line 9
        {"kind": "feedback", "id": "r1", "timestamp": "2026-11-20T10:00:00Z", "rating": -1,
         "source": "user", "comment": "wrong team"},    # line 10
        {"kind": "feedback", "id": "r2", "timestamp": "2026-11-20T10:00:00Z", "rating": 0},
        record(1),                                       # an exact duplicate is still parsed
    ])
    result = run(tmp_path, "b1")

    assert result.files == ["router-2026-11-20.jsonl"]
    assert result.lines_in == 11
    assert (result.records_parsed, result.feedback_events, result.quarantined) == (3, 1, 7)
    assert result.lines_in == result.records_parsed + result.feedback_events + result.quarantined

    assert tuple(quarantine(tmp_path, "b1").columns) == QUARANTINE_COLUMNS
    q = quarantine(tmp_path, "b1").set_index("line")
    assert set(q["stage"]) == {"ingest"}
    assert set(q["source_file"]) == {"router-2026-11-20.jsonl"}
    assert q.loc[3, "reason"].startswith("invalid JSON")
    assert q.loc[3, "raw"] == truncated
    assert q.loc[4, "reason"].startswith("invalid UTF-8")
    assert "\\xe9" in q.loc[4, "raw"]  # the bad byte is kept, escaped
    assert "request.messages" in q.loc[5, "reason"] and q.loc[5, "id"] == "r5"
    assert "arguments are not valid JSON" in q.loc[6, "reason"]
    assert q.loc[7, "reason"] == "not a JSON object (got list)"
    assert "latency_ms must be a number" in q.loc[9, "reason"]
    assert "rating must be +1 or -1" in q.loc[11, "reason"]

    staged = pd.read_parquet(Path(result.staging_dir) / "records.parquet")
    assert tuple(staged.columns) == STAGED_COLUMNS
    assert list(staged["id"]) == ["r1", "r2", "r1"]
    assert list(staged["route"]) == ["banking", "travel", "banking"]
    assert staged.loc[0, "query"] == "how do I do thing number 1?"
    assert json.loads(staged.loc[1, "raw"])["id"] == "r2"
    feedback = pd.read_parquet(Path(result.staging_dir) / "feedback.parquet")
    assert tuple(feedback.columns) == FEEDBACK_COLUMNS
    assert feedback.loc[0, "rating"] == -1 and feedback.loc[0, "comment"] == "wrong team"


def test_inline_feedback_is_flattened(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "landing" / "a.jsonl", [
        record(1, feedback={"rating": 1, "source": "sme", "comment": "right"}),
        record(2, feedback="great"),
    ])
    result = run(tmp_path, "b1")
    staged = pd.read_parquet(Path(result.staging_dir) / "records.parquet")
    assert staged.loc[0, ["rating", "feedback_source", "feedback_comment"]].tolist() == [
        1.0, "sme", "right"]
    assert quarantine(tmp_path, "b1").loc[0, "reason"] == "feedback must be an object"


def test_gzip_and_parquet_inputs(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir(parents=True)
    gz_lines = [json.dumps(record(i)) for i in range(3)] + ["{oops"]
    (landing / "router-a.jsonl.gz").write_bytes(gzip.compress("\n".join(gz_lines).encode()))
    # Parquet, one JSON text per row in a column `record` (what the simulator writes).
    texts = [json.dumps(record(i)) for i in range(3, 6)] + [None, "not json"]
    pq.write_table(pa.table({"record": pa.array(texts, pa.string())}), landing / "router-b.parquet")
    # Parquet, one column per top-level field: nested parts as structs or as JSON text.
    rows = [record(i) for i in range(6, 8)]
    rows[1] = {**rows[1], "request": json.dumps(rows[1]["request"]),
               "response": json.dumps(rows[1]["response"])}
    pq.write_table(pa.Table.from_pylist([rows[0]]), landing / "router-c.parquet")
    pq.write_table(pa.Table.from_pylist([rows[1]]), landing / "router-d.parquet")

    result = run(tmp_path, "b1")
    assert result.files == ["router-a.jsonl.gz", "router-b.parquet", "router-c.parquet",
                            "router-d.parquet"]
    assert (result.lines_in, result.records_parsed, result.quarantined) == (10, 8, 2)
    staged = pd.read_parquet(Path(result.staging_dir) / "records.parquet")
    assert sorted(staged["id"]) == [f"r{i}" for i in range(8)]
    assert staged.set_index("id").loc["r7", "query"] == "how do I do thing number 7?"
    q = quarantine(tmp_path, "b1")
    assert sorted(zip(q["source_file"], q["line"], strict=True)) == [
        ("router-a.jsonl.gz", 4), ("router-b.parquet", 5)]


def test_truncated_gzip_keeps_what_it_can(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir(parents=True)
    payload = gzip.compress("\n".join(json.dumps(record(i)) for i in range(200)).encode())
    (landing / "cut.jsonl.gz").write_bytes(payload[: len(payload) * 3 // 4])
    result = run(tmp_path, "b1")
    assert 0 < result.records_parsed < 200
    assert result.quarantined == 1
    reason = quarantine(tmp_path, "b1").loc[0, "reason"]
    assert reason.startswith(f"unreadable file after line {result.records_parsed}")


def replace(path: Path, items: list[Any]) -> Path:
    """Deliver ``path`` again as producers do: written aside, then renamed over the old file."""
    os.replace(write_jsonl(path.with_name(f".{path.name}.tmp"), items), path)
    return path


def test_redelivery_of_the_same_content_is_skipped(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    first = write_jsonl(landing / "router-2026-11-20.jsonl", [record(1), record(2)])
    assert run(tmp_path, "b1").records_parsed == 2

    (landing / "router-2026-11-20-copy.jsonl").write_bytes(first.read_bytes())
    replace(first, [record(1), record(2)])  # the same file delivered again
    again = run(tmp_path, "b2")
    assert again.files == [] and again.lines_in == 0
    assert again.skipped_files == ["router-2026-11-20-copy.jsonl", "router-2026-11-20.jsonl"]

    replace(first, [record(1), record(2), record(3)])  # same name, new content: read
    assert run(tmp_path, "b3").records_parsed == 3
    manifest = (landing / MANIFEST_NAME).read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in manifest] == ["b1", "b3"]


def test_files_changed_in_place_are_read_again_only_when_rechecked(tmp_path: Path) -> None:
    """A file appended to in place keeps its inode: by default it stays known (no stat per file
    and run); ``recheck_delivered`` stats every file and reads a changed one again."""
    landing = tmp_path / "landing"
    log = write_jsonl(landing / "router-2026-11-20.jsonl", [record(1)])
    assert run(tmp_path, "b1").records_parsed == 1
    with open(log, "ab") as handle:
        handle.write(json.dumps(record(2)).encode() + b"\n")
    unchanged = run(tmp_path, "b2")
    assert (unchanged.files, unchanged.known_files) == ([], 1)
    rechecked = ingest(IngestConfig(home=str(tmp_path), run_id="b3", recheck_delivered=True))
    assert rechecked.files == ["router-2026-11-20.jsonl"] and rechecked.records_parsed == 2
    assert run(tmp_path, "b4").files == []  # known again, by its new entry


def test_delivered_files_are_not_read_again(tmp_path: Path, monkeypatch) -> None:
    import tasks.ingest.landing

    landing = tmp_path / "landing"
    for day in range(5):
        write_jsonl(landing / f"router-2026-11-{day + 10}.jsonl", [record(day)])
    assert run(tmp_path, "b1").records_parsed == 5
    hashed: list[str] = []
    real = tasks.ingest.landing._sha256_regular
    monkeypatch.setattr(tasks.ingest.landing, "_sha256_regular",
                        lambda path: hashed.append(path.name) or real(path))
    write_jsonl(landing / "router-2026-11-20.jsonl", [record(9)])
    second = run(tmp_path, "b2")
    assert second.files == ["router-2026-11-20.jsonl"]
    assert (second.known_files, second.skipped_files) == (5, [])  # counted, not listed
    assert hashed == ["router-2026-11-20.jsonl"]  # the history is known by name, size, mtime


def test_retry_with_the_same_run_id_returns_the_batch(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    write_jsonl(landing / "a.jsonl", [record(1), "{bad"])
    first = run(tmp_path, "b1")
    write_jsonl(landing / "b.jsonl", [record(2)])  # arrives between the try and the retry
    (landing / MANIFEST_NAME).unlink()  # as if the first try died before the manifest step
    retry = run(tmp_path, "b1")
    assert retry == first
    assert retry.model_dump(mode="json") == json.loads(json.dumps(first.model_dump(mode="json")))
    assert [json.loads(x)["file"] for x in (landing / MANIFEST_NAME).read_text().splitlines()] \
        == ["a.jsonl"]  # repaired by the retry
    nxt = run(tmp_path, "b2")
    assert nxt.files == ["b.jsonl"] and (nxt.known_files, nxt.skipped_files) == (1, [])


def test_config_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):
        IngestConfig(run_id="../escape")
    with pytest.raises(ValueError):
        IngestConfig(patterns=["*.csv"])
    write_jsonl(tmp_path / "landing" / "a.jsonl", [record(1)])
    assert ingest(IngestConfig(home=str(tmp_path))).run_id.startswith("manual-")
    write_jsonl(tmp_path / "landing" / "b.jsonl", [record(2)])
    assert main(["--home", str(tmp_path), "--run-id", "cli-1"]) == 0
    out = capsys.readouterr().out
    assert "ingest cli-1: 1 file(s) read" in out and "quarantined" in out


def test_chunked_staging_matches_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Staging in chunks of 3 rows (and reading Parquet 2 rows at a time) gives the same batch,
    row for row, as staging everything at once; the files really are written in several chunks."""
    import tasks.ingest.landing as ingest_module

    items: list[Any] = [record(i) for i in range(10)]
    items[4:4] = ["{not json", {"kind": "feedback", "id": "r1", "rating": -1,
                                "timestamp": "2026-11-20T10:00:00Z"}]
    table = pa.table({"record": [json.dumps(record(i)) for i in range(20, 27)]})

    def stage(home: Path) -> tuple[IngestResult, dict[str, pd.DataFrame]]:
        write_jsonl(home / "landing" / "a.jsonl", items)
        pq.write_table(table, home / "landing" / "b.parquet")
        result = run(home, "chunks")
        staged = {name: pd.read_parquet(home / "staging" / "chunks" / f"{name}.parquet")
                  for name in ("records", "feedback")}
        staged["quarantine"] = quarantine(home, "chunks")
        return result, staged

    whole_result, whole = stage(tmp_path / "whole")
    monkeypatch.setattr(ingest_module, "CHUNK_ROWS", 3)
    monkeypatch.setattr(ingest_module, "PARQUET_BATCH_ROWS", 2)
    chunk_result, chunked = stage(tmp_path / "chunked")

    assert chunk_result.records_parsed == whole_result.records_parsed == 17
    assert (chunk_result.feedback_events, chunk_result.quarantined) == (1, 1)
    for name in whole:
        pd.testing.assert_frame_equal(chunked[name], whole[name])
    records_file = pq.ParquetFile(tmp_path / "chunked" / "staging" / "chunks" / "records.parquet")
    assert records_file.metadata.num_row_groups == 6  # ceil(17 / 3)
    assert not list((tmp_path / "chunked" / "staging" / "chunks").glob(".*.tmp"))


def test_a_failed_run_leaves_no_partial_staging(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash part-way through (after chunks were written) leaves no staged file, no temporary
    file and no manifest entry: the retry reads everything again."""
    import tasks.ingest.landing as ingest_module

    write_jsonl(tmp_path / "landing" / "a.jsonl", [record(i) for i in range(10)])
    monkeypatch.setattr(ingest_module, "CHUNK_ROWS", 2)
    calls = {"n": 0}
    real = ingest_module.flatten_record

    def flaky(obj: dict[str, Any], *args: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 7:
            raise MemoryError("simulated crash")
        return real(obj, *args)

    monkeypatch.setattr(ingest_module, "flatten_record", flaky)
    with pytest.raises(MemoryError):
        run(tmp_path, "crash")
    batch = tmp_path / "staging" / "crash"
    assert not batch.exists() or not any(batch.iterdir())
    assert not (tmp_path / "landing" / MANIFEST_NAME).exists()

    monkeypatch.setattr(ingest_module, "flatten_record", real)
    assert run(tmp_path, "crash").records_parsed == 10


def test_redaction_is_the_same_as_redact_record(tmp_path: Path) -> None:
    """Ingest redacts with a per-run cache of strings; each staged line is what
    ``redact_record`` gives, and the counts add up line by line."""
    from tasks.ingest.redact import redact_record

    pii = "mail jane.doe@example.com or call +1-555-201-7788"
    items = [record(1, query=pii), record(2, query=pii),
             record(3, feedback={"rating": -1, "comment": f"wrong: {pii}"}), record(4)]
    items[3]["request"]["messages"][0]["content"] = "for Dr. Okonkwo: " + pii  # system prompt
    write_jsonl(tmp_path / "landing" / "a.jsonl", items)
    result = run(tmp_path, "b1")
    staged = pd.read_parquet(Path(result.staging_dir) / "records.parquet")
    totals: dict[str, int] = {}
    for item, raw in zip(items, staged["raw"], strict=True):
        expected, counts = redact_record(item)
        assert json.loads(raw) == expected
        for kind, n in counts.items():
            totals[kind] = totals.get(kind, 0) + n
    assert result.pii_redacted == dict(sorted(totals.items()))
    assert totals["email"] == 4 and totals["name"] == 1
    assert "jane.doe" not in "".join(staged["raw"]) + "".join(staged["query"].dropna())


def test_the_manifest_index_is_derived_from_the_manifest(tmp_path: Path) -> None:
    """``_manifest.arrow`` only saves parsing: lost, corrupt or stale (the manifest cut), it is
    rebuilt; entries written before inodes were kept are matched by size and mtime."""
    from tasks.ingest.landing import MANIFEST_INDEX_NAME

    landing = tmp_path / "landing"
    for name in ("a", "b", "c"):
        write_jsonl(landing / f"{name}.jsonl", [record(ord(name))])
    assert run(tmp_path, "b1").records_parsed == 3
    index = landing / MANIFEST_INDEX_NAME
    assert run(tmp_path, "b2").known_files == 3 and index.exists()  # written by the next read

    index.write_bytes(b"not arrow")
    again = run(tmp_path, "b2a")
    assert (again.files, again.known_files) == ([], 3)

    manifest = landing / MANIFEST_NAME
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:2]))  # c.jsonl's entry removed by hand: read it again
    assert run(tmp_path, "b3").files == ["c.jsonl"]

    # Entries without inodes (older manifests) are known by name, size and mtime.
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "inode"}) + "\n"
                                for e in entries))
    old = run(tmp_path, "b4")
    assert (old.files, old.known_files) == ([], 3)


# --------------------------------------------------------------------------------------------
# nothing read from outside the landing folder; nothing left behind; nothing stranded


def test_links_and_special_files_are_refused_unread(tmp_path: Path) -> None:
    secret = write_jsonl(tmp_path / "elsewhere" / "secret.jsonl", [record(99)])
    (tmp_path / "elsewhere" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    landing = write_jsonl(tmp_path / "landing" / "good.jsonl", [record(1)]).parent
    (landing / "passwd.jsonl").symlink_to(tmp_path / "elsewhere" / "passwd")
    (landing / "secret.jsonl").symlink_to(secret)
    (landing / "inside.jsonl").symlink_to(landing / "good.jsonl")  # a link even to a file here
    os.mkfifo(landing / "pipe.jsonl")  # would block a reader for ever
    (landing / "folder.jsonl").mkdir()
    (landing / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    result = ingest(IngestConfig(home=str(tmp_path), run_id="b1",
                                 patterns=["*.jsonl", "sub/*.jsonl"]))
    assert result.files == ["good.jsonl"] and result.records_parsed == 1
    assert result.quarantined == 0 and result.quarantine_path is None
    assert set(result.refused_files) == {"passwd.jsonl", "secret.jsonl", "inside.jsonl",
                                         "pipe.jsonl", "folder.jsonl"}
    assert "symbolic link" in result.refused_files["passwd.jsonl"]
    assert "FIFO" in result.refused_files["pipe.jsonl"]
    staged = pd.read_parquet(tmp_path / "staging" / "b1" / "records.parquet")
    assert staged["id"].tolist() == ["r1"]  # nothing of the linked files was read
    assert "root:x" not in (landing / MANIFEST_NAME).read_text()
    # and they are reported again, never read, on the next run
    again = run(tmp_path, "b2")
    assert again.files == [] and "passwd.jsonl" in again.refused_files


def test_a_link_swapped_in_after_listing_is_not_followed(tmp_path: Path) -> None:
    from tasks.ingest.landing import RefusedFile, open_landing_file

    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "landing.jsonl"
    link.symlink_to(target)
    with pytest.raises(RefusedFile, match="symbolic link"):
        open_landing_file(link)


def test_a_broken_workload_file_quarantines_only_its_records(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    folder = tmp_path / "workloads"
    folder.mkdir()
    (folder / "desk.yaml").write_text(
        "workload_id: desk\nexperts:\n  - {name: hr, description: people}\n"
        "  - {name: it, description: laptops}\nprompt: Route the question.\n")  # no {experts}
    write_jsonl(tmp_path / "landing" / "mixed.jsonl",
                [record(1), record(2, workload_id="desk", expert="hr"), record(3), record(4),
                 record(5), record(6)])
    result = ingest(IngestConfig(home=str(tmp_path), run_id="b1", workloads_dir=str(folder)))
    assert (result.records_parsed, result.quarantined) == (5, 1)
    reason = quarantine(tmp_path, "b1")["reason"].item()
    assert "desk.yaml" in reason and "{experts}" in reason
    # the command line says it in the counts, not in a traceback
    write_jsonl(tmp_path / "landing" / "more.jsonl", [record(7, workload_id="desk")])
    assert main(["--home", str(tmp_path), "--workloads-dir", str(folder)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_killed_ingest_leaves_nothing_the_next_run_keeps(tmp_path: Path) -> None:
    """kill -9 while the staging Parquet is half written: the next run removes the hidden file
    and the uncommitted batch, counts them, and stages every line exactly once."""
    import signal
    import subprocess
    import sys

    landing = tmp_path / "landing"
    write_jsonl(landing / "big.jsonl", [record(i) for i in range(3000)] + ["{not json"])
    script = (
        "import os, signal, sys\n"
        "import tasks.ingest.landing as landing\n"
        "real = landing.ChunkedTableWriter._flush\n"
        "def flush(self):\n"
        "    real(self)\n"
        "    if self.path.name == 'records.parquet':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "landing.ChunkedTableWriter._flush = flush\n"
        "landing.CHUNK_ROWS = 1000\n"
        "landing.ingest(landing.IngestConfig(home=sys.argv[1], run_id='killed'))\n")
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert any(p.name.startswith(".records.parquet.") for p in leftovers)

    result = run(tmp_path, "b2")
    assert result.leftovers_removed >= 1
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["b2"]
    assert not list(tmp_path.rglob("*.tmp"))
    assert (result.records_parsed, result.quarantined) == (3000, 1)
    assert list((tmp_path / "quarantine").glob("*.parquet")) == [
        tmp_path / "quarantine" / "b2-ingest.parquet"]


def test_a_line_read_half_written_is_superseded_by_the_whole_record(tmp_path: Path) -> None:
    path = tmp_path / "landing" / "agent.jsonl"
    whole = json.dumps(record(2))
    write_jsonl(path, [record(1), whole[:60]])  # the producer is still writing line 2
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    first = run(tmp_path, "b1")
    assert (first.records_parsed, first.quarantined) == (1, 1)
    with path.open("ab") as handle:  # appended in place
        handle.write(whole[60:].encode() + b"\n")
    second = ingest(IngestConfig(home=str(tmp_path), run_id="b2", recheck_delivered=True))
    assert second.records_parsed == 2 and second.quarantine_superseded == 1
    assert not (tmp_path / "quarantine" / "b1-ingest.parquet").exists()
    # a line that was bad, not cut short, stays in the quarantine
    write_jsonl(tmp_path / "landing" / "bad.jsonl", [record(3), "{not json at all"])
    run(tmp_path, "b3")
    with (tmp_path / "landing" / "bad.jsonl").open("ab") as handle:
        handle.write(json.dumps(record(4)).encode() + b"\n")
    fourth = ingest(IngestConfig(home=str(tmp_path), run_id="b4", recheck_delivered=True))
    assert fourth.quarantine_superseded == 0
    assert quarantine(tmp_path, "b3")["raw"].tolist() == ["{not json at all"]
