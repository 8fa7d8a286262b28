"""Ingest: read new landing files into one staging batch, quarantining what cannot be parsed.

Run it::

    flywheel ingest --run-id 2026-11-26 --home /tmp/flywheel

Every landing file (``*.jsonl``, ``*.jsonl.gz``, ``*.parquet``) not yet processed is read line by
line (row by row). A line becomes one of three things:

* a **record** (the contract of :mod:`tasks.records`), flattened to ``FLAT_COLUMNS``;
* a **feedback event** (``{"kind": "feedback", "id": ..., ...}``), kept apart for validation to
  merge into the store;
* a **quarantined row**: invalid UTF-8, invalid JSON, not an object, or a record that breaks the
  contract's *shape* (no user message, no route, a field of the wrong JSON type), with the reason,
  the raw text, the source file and the line number. Nothing is dropped silently.

PII is redacted (:mod:`tasks.redact`) before any row is built: a parsed line's string values
(query, response, tool-call arguments, feedback comment; never ids, timestamps or keys) get typed
placeholders such as ``<EMAIL>``, and its ``raw`` text is then re-serialised from the redacted
object (kept byte for byte when nothing was found); a line that does not parse has its raw text
redacted as plain text. So staging and quarantine never hold the PII the redactor recognises.

Ingestion checks shapes and types; :mod:`tasks.validate` checks values (ids, timestamps, routes,
ranges) with great-expectations.

The batch goes to ``staging/<run_id>/`` (``records.parquet``, ``feedback.parquet`` and
``_batch.json``, the result, written last as the commit marker) and rejected rows to
``quarantine/<run_id>-ingest.parquet``. Only then are the files added to
``landing/_manifest.jsonl`` (file name + sha256), so a file is skipped once its content has been
staged, a re-delivered copy of the same content is skipped too, and a task retried with the same
``run_id`` returns the batch it already wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from tasks.config import Paths, get_paths
from tasks.locks import file_lock
from tasks.records import (
    FLAT_COLUMNS,
    SCHEMA_VERSION,
    RecordError,
    nesting_error,
    query_of,
    route_of,
)
from tasks.redact import redact, redact_record

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_NAME = "_manifest.jsonl"
BATCH_MARKER = "_batch.json"

#: Columns of every quarantine file (ingest and validate write the same schema).
QUARANTINE_COLUMNS: tuple[str, ...] = ("stage", "reason", "source_file", "line", "raw", "id",
                                       "client_id")
#: Staged records: the flattened contract plus the line they came from.
STAGED_COLUMNS: tuple[str, ...] = (*FLAT_COLUMNS, "line")
#: Staged feedback events.
FEEDBACK_COLUMNS: tuple[str, ...] = ("id", "timestamp", "rating", "source", "comment",
                                     "source_file", "line", "raw")

_NUMERIC = {"latency_ms", "ttft_ms", "rating", "line"}
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,199}$"
#: Rows buffered before a chunk is written to the staging Parquet files: memory stays bounded by
#: the chunk, not the batch (a 1M-line delivery is staged in ~50 chunks).
CHUNK_ROWS = 20_000
#: Rows read at a time from a landing Parquet file.
PARQUET_BATCH_ROWS = 10_000


def default_run_id() -> str:
    """A run id from the current UTC time (Airflow passes its own)."""
    return datetime.now(UTC).strftime("manual-%Y%m%dT%H%M%S%fZ")


class IngestConfig(BaseModel):
    """Settings of ``flywheel ingest``."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN,
                               description="Names the staging batch; a retry with the same id "
                                           "returns the batch already written (default: "
                                           "'manual-' + the UTC time)")
    patterns: list[str] = Field(["*.jsonl", "*.jsonl.gz", "*.parquet"], min_length=1,
                                max_length=20,
                                description="Glob patterns of landing files to read; names "
                                            "starting with '_' or '.' are never read")

    @field_validator("patterns")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.endswith((".jsonl", ".jsonl.gz", ".parquet")):
                raise ValueError(f"{pattern!r}: patterns must end in .jsonl, .jsonl.gz or "
                                 ".parquet")
        return value


class IngestResult(BaseModel):
    """What one ingest run staged (a small XCom value: counts and paths, never data)."""

    run_id: str = Field(description="Staging batch id")
    files: list[str] = Field(description="Landing files read into this batch (names)")
    skipped_files: list[str] = Field(default_factory=list,
                                     description="Landing files skipped: content already staged")
    lines_in: int = Field(ge=0, description="Non-blank lines/rows read")
    records_parsed: int = Field(ge=0, description="Lines staged as records")
    feedback_events: int = Field(ge=0, description="Lines staged as feedback events")
    quarantined: int = Field(ge=0, description="Lines rejected, with reasons")
    staging_dir: str = Field(description="staging/<run_id>")
    quarantine_path: str | None = Field(None, description="Quarantine file, if any line failed")
    pii_redacted: dict[str, int] = Field(default_factory=dict,
                                         description="PII values replaced by placeholders, per "
                                                     "kind (email, phone, card, ...)")


# --------------------------------------------------------------------------------------------
# small file helpers (validate reuses them)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` beside ``path`` and rename it over ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet table to ``path`` atomically (readers see the old file or the new one)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rows_to_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pa.Table:
    """Rows as a table with a fixed schema: numbers as float64 (``line`` int64), the rest text."""
    import pyarrow as pa

    schema = pa.schema([
        (name, pa.int64() if name == "line" else pa.float64() if name in _NUMERIC else pa.string())
        for name in columns
    ])
    return pa.Table.from_pylist([{c: _cell(row.get(c)) for c in columns} for row in rows],
                                schema=schema)


class ChunkedTableWriter:
    """Rows in, one Parquet file out: written a chunk at a time to a hidden temporary file and
    renamed over ``path`` on :meth:`commit`, so memory is bounded by ``chunk_rows`` and readers see
    the old file or the whole new one, never a part.

    Used as a context manager, leaving the block by an exception removes the temporary file.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], chunk_rows: int | None = None):
        self.path, self.columns = path, columns
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self.count = 0
        self._rows: list[dict[str, Any]] = []
        self._writer: Any = None
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.count += 1
        if len(self._rows) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        table = rows_to_table(self._rows, self.columns)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
        self._writer.write_table(table)
        self._rows = []

    def commit(self, keep_empty: bool = True) -> bool:
        """Move the file into place; with ``keep_empty=False`` an empty one is removed instead.
        Returns whether ``path`` now exists."""
        if not self.count and not keep_empty:
            self.abort()
            self.path.unlink(missing_ok=True)
            return False
        if self._rows or self._writer is None:
            self._flush()  # the last chunk (or the schema of an empty file)
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        return True

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._rows = []
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ChunkedTableWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()  # after commit() there is nothing left to remove


def _cell(value: Any) -> Any:
    """A missing value (None, NaN, pandas' NA/NaT) as None; anything else as it is."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return None
    return None if isinstance(value, float) and value != value else value


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# reading landing files: every reader yields (line_number, raw_text, parsed_object | None, error)

Parsed = tuple[int, str, Any, str | None]


def _parse_line(number: int, data: bytes) -> Parsed:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return number, data.decode("utf-8", "backslashreplace"), None, (
            f"invalid UTF-8 at byte {exc.start}")
    return _parse_text(number, text)


def _parse_text(number: int, text: str) -> Parsed:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return number, text, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:  # json.loads recurses once per level of nesting
        return number, text, None, "invalid JSON: nested too deeply to parse"
    if not isinstance(obj, dict):
        return number, text, None, f"not a JSON object (got {type(obj).__name__})"
    too_deep = nesting_error(obj)
    if too_deep:  # writing it back (staging, redaction) would recurse as deep
        return number, text, None, too_deep
    return number, text, obj, None


def _read_jsonl(path: Path) -> Iterator[Parsed]:
    """Lines of a JSONL file. CRLF line ends are accepted, and so is a UTF-8 byte order mark at
    the start of the file (it is stripped); blank lines are skipped and not counted."""
    opener = gzip.open if path.name.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, data in enumerate(handle, start=1):  # noqa: B007 - used after the loop
                data = data.rstrip(b"\r\n")
                if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                if data.strip():
                    yield _parse_line(number, data)
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated or corrupt gzip: keep the lines read so far, quarantine the rest.
        yield number + 1, "", None, f"unreadable file after line {number} ({path.name}): {exc}"


_JSON_FIELDS = ("request", "response", "usage", "feedback")


def _read_parquet(path: Path) -> Iterator[Parsed]:
    """Rows of a Parquet file, read a record batch at a time (a large file never sits in memory
    whole)."""
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        names = reader.schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - any reader error means an unreadable file
        yield 1, "", None, f"unreadable Parquet file {path.name}: {exc}"
        return
    foreign = None
    if "record" not in names and not {"request", "response"} <= set(names):
        foreign = (f"foreign Parquet schema in {path.name}: neither a 'record' column nor "
                   f"'request' and 'response' columns (has {names[:10]})")
    number = 0
    try:
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in _parquet_rows(batch, names):
                number += 1
                yield _parquet_row(number, row, names, foreign)
    except Exception as exc:  # noqa: BLE001 - a corrupt page part-way through the file
        yield number + 1, "", None, (f"unreadable Parquet file {path.name} after row {number}: "
                                     f"{exc}")


def _parquet_rows(batch, names: list[str]) -> Iterator[Any]:
    if "record" in names:  # one JSON text per row
        return iter(batch.column(names.index("record")).to_pylist())
    return iter(batch.to_pylist())


def _parquet_row(number: int, row: Any, names: list[str], foreign: str | None) -> Parsed:
    if "record" in names:
        if row is None or (isinstance(row, str) and not row.strip()):
            return number, "", None, None  # blank: skipped by the caller
        if isinstance(row, bytes):
            return _parse_line(number, row)
        return _parse_text(number, str(row))
    # One column per top-level field; nested parts are structs or JSON text.
    obj = {k: v for k, v in row.items() if v is not None}
    raw = json.dumps(obj, ensure_ascii=False, default=str)
    error = None
    for name in _JSON_FIELDS:
        if isinstance(obj.get(name), str):
            try:
                obj[name] = json.loads(obj[name])
            except json.JSONDecodeError as exc:
                error = f"column {name!r} is not valid JSON: {exc.msg}"
            except RecursionError:
                error = f"column {name!r} is nested too deeply to parse"
    error = foreign or error or nesting_error(obj)
    return number, raw, (None if error else obj), error


def read_landing_file(path: Path) -> Iterator[Parsed]:
    """``(line, raw, object or None, error or None)`` for each non-blank line/row of ``path``."""
    if path.name.endswith(".parquet"):
        return (row for row in _read_parquet(path) if row[1] or row[3])  # skip blank rows
    return _read_jsonl(path)


# --------------------------------------------------------------------------------------------
# flattening


def _text(obj: dict[str, Any], name: str, where: str = "") -> str | None:
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise RecordError(f"{where}{name} must be a string, got {type(value).__name__}")


def _number(obj: dict[str, Any], name: str, where: str = "") -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}{name} must be a number, got {type(value).__name__} "
                          f"{json.dumps(value)[:40]}")
    return float(value)


def flatten_record(obj: dict[str, Any]) -> dict[str, Any]:
    """One contract record as a row of ``FLAT_COLUMNS`` (without provenance).

    Raises:
        RecordError: the record's shape breaks the contract; the message says how.
    """
    version = obj.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecordError(f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})")
    feedback = obj.get("feedback")
    if feedback is not None and not isinstance(feedback, dict):
        raise RecordError("feedback must be an object")
    feedback = feedback or {}
    return {
        "id": _text(obj, "id"),
        "timestamp": _text(obj, "timestamp"),
        "workload_id": _text(obj, "workload_id"),
        "client_id": _text(obj, "client_id"),
        "model": _text(obj, "model"),
        "query": query_of(obj.get("request")),
        "route": route_of(obj.get("response")),
        "latency_ms": _number(obj, "latency_ms"),
        "ttft_ms": _number(obj, "ttft_ms"),
        "rating": _number(feedback, "rating", "feedback."),
        "feedback_source": _text(feedback, "source", "feedback."),
        "feedback_comment": _text(feedback, "comment", "feedback."),
    }


def flatten_feedback(obj: dict[str, Any]) -> dict[str, Any]:
    """A late feedback event as a row of ``FEEDBACK_COLUMNS`` (without provenance).

    Raises:
        RecordError: no id, no parseable timestamp, or a rating other than +1/-1.
    """
    event_id = _text(obj, "id", "feedback event: ")
    if not event_id:
        raise RecordError("feedback event has no id")
    timestamp = _text(obj, "timestamp", "feedback event: ")
    try:
        moment = datetime.fromisoformat(timestamp or "")
    except ValueError as exc:
        raise RecordError(f"feedback event timestamp {timestamp!r} is not ISO 8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    rating = _number(obj, "rating", "feedback event: ")
    if rating not in (-1.0, 1.0):
        raise RecordError(f"feedback event rating must be +1 or -1, got {obj.get('rating')!r}")
    return {
        "id": event_id,
        "timestamp": moment.astimezone(UTC).isoformat(),
        "rating": rating,
        "source": _text(obj, "source", "feedback event: ") or "user",
        "comment": _text(obj, "comment", "feedback event: "),
    }


# --------------------------------------------------------------------------------------------
# the manifest of processed landing files


def _read_manifest(paths: Paths) -> list[dict[str, Any]]:
    manifest = paths.landing / MANIFEST_NAME
    if not manifest.exists():
        return []
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def _record_in_manifest(paths: Paths, entries: list[dict[str, Any]]) -> None:
    """Append the entries not there yet (a retry repairs a run that died before this step)."""
    seen = {(e["file"], e["sha256"]) for e in _read_manifest(paths)}
    new = [e for e in entries if (e["file"], e["sha256"]) not in seen]
    if new:
        with open(paths.landing / MANIFEST_NAME, "a") as handle:
            handle.writelines(json.dumps(e, sort_keys=True) + "\n" for e in new)
            handle.flush()
            os.fsync(handle.fileno())


def _landing_files(paths: Paths, patterns: list[str]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in paths.landing.glob(pattern)
                     if p.is_file() and not p.name.startswith(("_", ".")))
    return sorted(found, key=lambda p: p.name)


# --------------------------------------------------------------------------------------------


def ingest(config: IngestConfig) -> IngestResult:
    """Stage every landing file not yet processed as one batch (``config.run_id``).

    Args:
        config: where the home is, which batch to write, which files to read.

    Returns:
        The counts (``lines_in == records_parsed + feedback_events + quarantined``) and paths.
    """
    paths = get_paths(config.home)
    run_id = config.run_id or default_run_id()
    staging_dir = paths.staging / run_id
    marker = staging_dir / BATCH_MARKER
    with file_lock(paths.landing / ".ingest.lock"):
        if marker.exists():  # a retry: the batch is written; make sure the manifest knows it
            saved = json.loads(marker.read_text())
            _record_in_manifest(paths, saved["manifest"])
            return IngestResult.model_validate(saved["result"])

        manifest = _read_manifest(paths)
        done = {entry["sha256"] for entry in manifest}
        # a file delivered before is known by name, size and modification time without reading
        # it again: a run costs the new files, not the history (the hash is for new names only)
        known = {(e["file"], e.get("size"), e.get("mtime_ns")) for e in manifest
                 if e.get("mtime_ns") is not None}
        quarantine_path = paths.quarantine / f"{run_id}-ingest.parquet"
        files: list[str] = []
        skipped: list[str] = []
        entries: list[dict[str, Any]] = []
        lines_in = 0
        pii: dict[str, int] = {}
        with (ChunkedTableWriter(staging_dir / "records.parquet", STAGED_COLUMNS) as records,
              ChunkedTableWriter(staging_dir / "feedback.parquet", FEEDBACK_COLUMNS) as events,
              ChunkedTableWriter(quarantine_path, QUARANTINE_COLUMNS) as rejected):
            for path in _landing_files(paths, config.patterns):
                stat = path.stat()
                if (path.name, stat.st_size, stat.st_mtime_ns) in known:
                    skipped.append(path.name)
                    continue
                digest = sha256_of(path)
                if digest in done:
                    skipped.append(path.name)
                    continue
                done.add(digest)  # the same content twice in one delivery is read once
                files.append(path.name)
                file_lines = 0
                for number, raw, obj, error in read_landing_file(path):
                    file_lines += 1
                    _stage_line(path.name, number, raw, obj, error, pii, records, events,
                                rejected)
                lines_in += file_lines
                entries.append({"file": path.name, "sha256": digest, "run_id": run_id,
                                "lines": file_lines, "size": stat.st_size,
                                "mtime_ns": stat.st_mtime_ns})

            assert lines_in == records.count + events.count + rejected.count, "ingest lost lines"
            has_quarantine = rejected.commit(keep_empty=False)
            records.commit()
            events.commit()
        result = IngestResult(
            run_id=run_id, files=files, skipped_files=skipped, lines_in=lines_in,
            records_parsed=records.count, feedback_events=events.count,
            quarantined=rejected.count, staging_dir=str(staging_dir),
            quarantine_path=str(quarantine_path) if has_quarantine else None,
            pii_redacted=dict(sorted(pii.items())))
        payload = {"result": result.model_dump(mode="json"), "manifest": entries}
        write_bytes_atomic(marker, json.dumps(payload, indent=2).encode())  # the commit point
        _record_in_manifest(paths, entries)
    return result


def _stage_line(source: str, number: int, raw: str, obj: Any, error: str | None,
                pii: dict[str, int], records: ChunkedTableWriter, events: ChunkedTableWriter,
                rejected: ChunkedTableWriter) -> None:
    """Redact one line, then stage it as a record, a feedback event or a quarantined row."""
    raw, obj = _redacted(raw, obj, pii)
    where = {"source_file": source, "line": number, "raw": raw}
    if obj is not None and error is None:
        try:
            if obj.get("kind") == "feedback":
                events.append({**flatten_feedback(obj), **where})
                return
            if obj.get("kind") not in (None, "record"):
                raise RecordError(f"unknown kind {obj.get('kind')!r}")
            records.append({**flatten_record(obj), **where})
            return
        except RecordError as exc:
            error = str(exc)
    ids = obj if isinstance(obj, dict) else {}
    rejected.append({"stage": "ingest", "reason": error, **where, "id": _maybe_str(ids.get("id")),
                     "client_id": _maybe_str(ids.get("client_id"))})


def _redacted(raw: str, obj: Any, total: dict[str, int]) -> tuple[str, Any]:
    """``(raw, obj)`` with PII replaced, adding the counts per kind to ``total``.

    A parsed object is redacted field by field and its raw text re-serialised from it (redacting
    JSON text directly could split an escape sequence); text that did not parse is redacted as is.
    """
    if isinstance(obj, dict):
        obj, counts = redact_record(obj)
        if counts:
            raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    else:
        raw, counts = redact(raw)
    for kind, n in counts.items():
        total[kind] = total.get(kind, 0) + n
    return raw, obj


def _maybe_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def main(argv: list[str] | None = None) -> int:
    from tasks.settings import parse_config

    config = parse_config(IngestConfig, argv, prog="flywheel ingest",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    result = ingest(config)
    print(f"ingest {result.run_id}: {len(result.files)} file(s) read, "
          f"{len(result.skipped_files)} already staged")
    print(f"  lines in        {result.lines_in:>8}")
    print(f"  records         {result.records_parsed:>8}")
    print(f"  feedback events {result.feedback_events:>8}")
    print(f"  quarantined     {result.quarantined:>8}"
          + (f"  -> {result.quarantine_path}" if result.quarantine_path else ""))
    pii = ", ".join(f"{kind} {n}" for kind, n in result.pii_redacted.items()) or "none"
    print(f"  PII redacted    {sum(result.pii_redacted.values()):>8}  ({pii})")
    print(f"  staging         {result.staging_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
