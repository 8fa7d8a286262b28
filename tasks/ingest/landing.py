"""Ingest: read new landing files into one staging batch, quarantining what cannot be parsed.

Run it::

    flywheel ingest --run-id 2026-11-26 --home /tmp/flywheel

Every landing file (``*.jsonl``, ``*.jsonl.gz``, ``*.parquet``) not yet processed is read line by
line (row by row). A line becomes one of three things:

* a **record** (the contract of :mod:`tasks.core.records`), flattened to ``FLAT_COLUMNS``;
* a **feedback event** (``{"kind": "feedback", "id": ..., ...}``), kept apart for validation to
  merge into the store;
* a **quarantined row**: invalid UTF-8, invalid JSON, not an object, or a record that breaks the
  contract's *shape* (no user message, no route, a field of the wrong JSON type), with the reason,
  the raw text, the source file and the line number. Nothing is dropped silently.

PII is redacted (:mod:`tasks.ingest.redact`) before any row is built: a parsed line's string values
(query, response, tool-call arguments, feedback comment; never ids, timestamps or keys) get typed
placeholders such as ``<EMAIL>``, and its ``raw`` text is then re-serialised from the redacted
object (kept byte for byte when nothing was found); a line that does not parse has its raw text
redacted as plain text. So staging and quarantine never hold the PII the redactor recognises.

Only regular files inside the landing folder are read: a symbolic link (wherever it points) or
anything else that is not a plain file is refused unread, and listed by name in the result
(``refused_files``) every run until it is removed. A record whose workload's file fails its checks
is quarantined with the file's path and every problem; the other workloads' records are staged.
Records follow one contract whether they arrive as files or over HTTP
(:mod:`tasks.ingest.intake`): an empty or blank id, or a non-standard JSON constant (``NaN``,
``Infinity``) anywhere in a line, is refused with the reason.

Ingestion checks shapes and types; :mod:`tasks.ingest.validate` checks values (ids, timestamps,
routes, ranges) with great-expectations.

The batch goes to ``staging/<run_id>/`` (``records.parquet``, ``feedback.parquet`` and
``_batch.json``, the result, written last as the commit marker) and rejected rows to
``quarantine/<run_id>-ingest.parquet``. Only then are the files added to
``landing/_manifest.jsonl`` (file name, sha256, size, modification time, inode), so a file is
skipped once its content has been staged, a re-delivered copy of the same content is skipped too,
and a task retried with the same ``run_id`` returns the batch it already wrote.

A run costs the new files, not the folder's history: a delivered file is recognised by its name
and inode straight from the folder listing (no ``stat``, no hash, no read), the manifest is read
through its Arrow index (``_manifest.arrow``, only lines appended since are parsed), and only new
files are hashed. Files are expected to arrive whole, renamed into place (a replaced file is read
again); set ``recheck_delivered`` for producers that append to delivered files in place. Then a
line read before its producer had finished it is quarantined as it was, and superseded (removed
from that quarantine file) once the whole line is staged.

A run killed part-way commits nothing (the marker and the manifest come last): the next run removes
what it left (hidden temporary files, the staging folder without its marker, its quarantine file),
counts it (``leftovers_removed``) and reads its landing files again.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import gzip
import json
import logging
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISLNK, S_ISREG
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import BaseModel, Field, field_validator

from tasks.core.clock import stamp
from tasks.core.config import Paths, get_paths
from tasks.core.files import (
    file_lock,
    publish,
    sha256_of,
    temporary_beside,
    write_arrow_atomic,
    write_bytes_atomic,
    write_table_atomic,
)
from tasks.core.records import (
    FLAT_COLUMNS,
    MAX_NESTING,
    SCHEMA_VERSION,
    RecordError,
    id_problem,
    loads_strict,
    nesting_error,
    non_finite_error,
    query_of,
    route_of,
)
from tasks.core.workload import Decision, WorkloadError, list_workloads, read_workload
from tasks.ingest.redact import KEEP_FIELDS, redact

if TYPE_CHECKING:
    import pyarrow as pa

_log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.jsonl"
#: The manifest's columns in Arrow's file format, derived from it (see :func:`_read_manifest`).
MANIFEST_INDEX_NAME = "_manifest.arrow"
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
#: Distinct strings whose redaction one ingest run remembers (see :class:`_Stager`).
REDACT_CACHE_SIZE = 50_000
#: Longer strings are redacted without being remembered (they rarely repeat).
REDACT_CACHE_MAX_CHARS = 2_000


def default_run_id() -> str:
    """A run id from the current UTC time (Airflow passes its own)."""
    return stamp("manual-%Y%m%dT%H%M%S%fZ")


#: Set (true/1) where producers append to delivered landing files in place.
RECHECK_ENV = "FLYWHEEL_RECHECK_DELIVERED"


class IngestConfig(BaseModel):
    """Settings of ``flywheel ingest``."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN,
                               description="Names the staging batch; a retry with the same id "
                                           "returns the batch already written (default: "
                                           "'manual-' + the UTC time)")
    recheck_delivered: bool = Field(
        default_factory=lambda: os.environ.get(RECHECK_ENV, "").lower() in {"1", "true", "yes"},
        description="Stat every landing file each run and look again at one whose size "
                           "or modification time changed: for producers that append to or "
                           "rewrite delivered files in place. Off, a delivered file is known by "
                           "name and inode from the folder listing alone (one replaced by a "
                           "rename is looked at again), so a run's cost does not grow with the "
                           "folder's history. Default: $FLYWHEEL_RECHECK_DELIVERED (true/1)")
    patterns: list[str] = Field(["*.jsonl", "*.jsonl.gz", "*.parquet"], min_length=1,
                                max_length=20,
                                description="Glob patterns of landing files to read; names "
                                            "starting with '_' or '.' are never read")

    workloads_dir: str | None = Field(None, description=(
        "Folder of workload files, whose 'decision' says where each workload's records hold "
        "the agent's decision (default $FLYWHEEL_WORKLOADS; the shipped ones are found too)"))

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
                                     description="New or changed landing files skipped after "
                                                 "hashing: their content was already staged "
                                                 "(a re-delivered copy)")
    known_files: int = Field(0, ge=0, description="Landing files recognised as delivered before "
                                                  "(by name and inode; with recheck_delivered, "
                                                  "by size and modification time), neither "
                                                  "hashed nor read; counted, not listed, as the "
                                                  "history grows with every run")
    lines_in: int = Field(ge=0, description="Non-blank lines/rows read")
    records_parsed: int = Field(ge=0, description="Lines staged as records")
    feedback_events: int = Field(ge=0, description="Lines staged as feedback events")
    quarantined: int = Field(ge=0, description="Lines rejected, with reasons")
    staging_dir: str = Field(description="staging/<run_id>")
    quarantine_path: str | None = Field(None, description="Quarantine file, if any line failed")
    pii_redacted: dict[str, int] = Field(default_factory=dict,
                                         description="PII values replaced by placeholders, per "
                                                     "kind (email, phone, card, ...)")
    refused_files: dict[str, str] = Field(
        default_factory=dict, description="Landing entries matching the patterns that were not "
                                          "read, name -> reason: symbolic links and anything "
                                          "that is not a regular file (their content is never "
                                          "opened; they are listed again each run until removed)")
    leftovers_removed: int = Field(0, ge=0, description="Files an interrupted ingest had left "
                                                        "(hidden temporary files, batches "
                                                        "without their commit marker), removed")
    quarantine_superseded: int = Field(
        0, ge=0, description="Quarantined lines of an earlier run that did not parse because "
                             "they were read before their file was complete, removed now that "
                             "the whole line is staged (with recheck_delivered)")


def rows_to_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pa.Table:
    """Rows as a table with a fixed schema: numbers as float64 (``line`` int64), the rest text."""
    import pyarrow as pa

    return pa.Table.from_pylist([{c: _cell(row.get(c)) for c in columns} for row in rows],
                                schema=_schema(columns))


def _schema(columns: tuple[str, ...]) -> pa.Schema:
    """The fixed schema of a staging or quarantine table: numbers as float64 (``line`` int64),
    the rest text."""
    import pyarrow as pa

    return pa.schema([
        (name, pa.int64() if name == "line" else pa.float64() if name in _NUMERIC else pa.string())
        for name in columns
    ])


class ChunkedTableWriter:
    """Rows in, one Parquet file out: written a chunk at a time to a hidden temporary file and
    renamed over ``path`` on :meth:`commit`, so memory is bounded by ``chunk_rows`` and readers see
    the old file or the whole new one, never a part.

    Rows are kept column by column (one list per column) and each chunk becomes one Parquet row
    group through ``pyarrow.array`` per column. Values must be what the schema says: ``str`` or
    None for text, a number or None for numbers (a float NaN is stored as null).

    Used as a context manager, leaving the block by an exception removes the temporary file.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], chunk_rows: int | None = None):
        self.path, self.columns = path, columns
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self.count = 0
        self._schema = _schema(columns)
        self._data: list[list[Any]] = [[] for _ in columns]
        self._buffered = 0
        self._writer: Any = None
        self._tmp = temporary_beside(path)

    def append(self, row: dict[str, Any]) -> None:
        for column, name in zip(self._data, self.columns, strict=True):
            column.append(row.get(name))
        self.count += 1
        self._buffered += 1
        if self._buffered >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_arrays(
            [pa.array(values, type=field.type, from_pandas=True)
             for values, field in zip(self._data, self._schema, strict=True)],
            schema=self._schema)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        self._writer.write_table(table)
        self._data = [[] for _ in self.columns]
        self._buffered = 0

    def commit(self, keep_empty: bool = True) -> bool:
        """Move the file into place; with ``keep_empty=False`` an empty one is removed instead.
        Returns whether ``path`` now exists."""
        if not self.count and not keep_empty:
            self.abort()
            self.path.unlink(missing_ok=True)
            return False
        if self._buffered or self._writer is None:
            self._flush()  # the last chunk (or the schema of an empty file)
        self._writer.close()
        self._writer = None
        publish(self._tmp, self.path)
        return True

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._data = [[] for _ in self.columns]
        self._buffered = 0
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
        obj = loads_strict(text)
    except json.JSONDecodeError as exc:
        return number, text, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except ValueError as exc:  # NaN, Infinity: refused as the intake refuses them
        return number, text, None, f"invalid JSON: {exc}"
    except RecursionError:  # json.loads recurses once per level of nesting
        return number, text, None, "invalid JSON: nested too deeply to parse"
    if not isinstance(obj, dict):
        return number, text, None, f"not a JSON object (got {type(obj).__name__})"
    # Writing a deep object back (staging, redaction) would recurse as deep. It nests no deeper
    # than the brackets its text opens, so most lines are cleared by counting them.
    if text.count("{") + text.count("[") > MAX_NESTING:
        too_deep = nesting_error(obj)
        if too_deep:
            return number, text, None, too_deep
    return number, text, obj, None


def _read_jsonl(path: Path) -> Iterator[Parsed]:
    """Lines of a JSONL file. CRLF line ends are accepted, and so is a UTF-8 byte order mark at
    the start of the file (it is stripped); blank lines are skipped and not counted."""
    number = 0
    try:
        with open_landing_file(path) as raw, (
                gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw) as handle:
            for number, data in enumerate(handle, start=1):  # noqa: B007 - used after the loop
                data = data.rstrip(b"\r\n")
                if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                if data.strip():
                    yield _parse_line(number, data)
    except RefusedFile:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated or corrupt gzip: keep the lines read so far, quarantine the rest.
        yield number + 1, "", None, f"unreadable file after line {number} ({path.name}): {exc}"


_JSON_FIELDS = ("request", "response", "usage", "feedback")


def _read_parquet(path: Path) -> Iterator[Parsed]:
    """Rows of a Parquet file, read a record batch at a time (a large file never sits in memory
    whole)."""
    import pyarrow.parquet as pq

    with open_landing_file(path) as handle:
        try:
            reader = pq.ParquetFile(handle)
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
            yield number + 1, "", None, (f"unreadable Parquet file {path.name} after row "
                                         f"{number}: {exc}")


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
                obj[name] = loads_strict(obj[name])
            except json.JSONDecodeError as exc:
                error = f"column {name!r} is not valid JSON: {exc.msg}"
            except ValueError as exc:
                error = f"column {name!r} is not valid JSON: {exc}"
            except RecursionError:
                error = f"column {name!r} is nested too deeply to parse"
    error = foreign or error or nesting_error(obj) or non_finite_error(obj)
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


def flatten_record(obj: dict[str, Any],
                   decision_of: Callable[[str | None], Decision] | None = None) -> dict[str, Any]:
    """One contract record as a row of ``FLAT_COLUMNS`` (without provenance); its route is read
    as its workload's file says (``decision_of(workload_id)``, default: ``route_to(expert=)``).

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
    if (problem := id_problem(obj.get("id"), "'id'")) and "id" in obj:
        raise RecordError(problem)  # a missing id is validation's (id_not_null)
    return {
        "id": _text(obj, "id"),
        "timestamp": _text(obj, "timestamp"),
        "workload_id": _text(obj, "workload_id"),
        "client_id": _text(obj, "client_id"),
        "model": _text(obj, "model"),
        "query": query_of(obj.get("request")),
        "route": route_of(obj.get("response"),
                          decision_of(obj.get("workload_id")) if decision_of else None),
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
    if problem := id_problem(obj.get("id"), "'id'"):
        raise RecordError(f"feedback event: {problem}")
    event_id = obj["id"]
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


def _manifest_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("file", pa.string()), ("sha256", pa.string()), ("size", pa.int64()),
                      ("mtime_ns", pa.int64()), ("inode", pa.int64())])


def _read_manifest(paths: Paths) -> pa.Table:
    """The manifest's ``file``, ``sha256``, ``size``, ``mtime_ns`` and ``inode`` as a table.

    ``_manifest.jsonl`` is the record. :data:`MANIFEST_INDEX_NAME` beside it holds the same
    columns in Arrow's file format, with how many bytes of the manifest they cover, so a run
    parses only the lines appended since (pyarrow's JSON reader) and maps the rest from disk. The
    index is derived data: missing, unreadable, or not matching the manifest's inode and the bytes
    it ends on (the manifest was replaced or cut), it is rebuilt from the whole manifest. Entries
    written before sizes, times or inodes were kept have nulls there.
    """
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    manifest = paths.landing / MANIFEST_NAME
    schema = _manifest_schema()
    if not manifest.exists():
        return schema.empty_table()
    index_path = paths.landing / MANIFEST_INDEX_NAME
    with open(manifest, "rb") as handle:
        info = os.fstat(handle.fileno())
        table, covered = _manifest_index(index_path, handle, info.st_ino, info.st_size)
        if covered == info.st_size:
            return table
        handle.seek(covered)
        tail = handle.read(info.st_size - covered)
        ends = _manifest_end(handle, info.st_size)
    if tail.strip():
        table = pa.concat_tables([table, pj.read_json(io.BytesIO(tail), parse_options=(
            pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")))])
    sign = {"inode": str(info.st_ino), "bytes": str(info.st_size), "ends": ends}
    write_arrow_atomic(table.replace_schema_metadata(sign), index_path)
    return table


def _manifest_end(handle: Any, size: int) -> str:
    """The last bytes (up to 64) before ``size`` of the open manifest, as hex."""
    handle.seek(max(0, size - 64))
    return handle.read(size - max(0, size - 64)).hex()


def _manifest_index(path: Path, manifest: Any, inode: int, size: int) -> tuple[pa.Table, int]:
    """``(table, bytes of the manifest it covers)`` from the index at ``path``; an empty table
    and 0 when there is none or it does not match the open ``manifest``."""
    import pyarrow as pa

    schema = _manifest_schema()
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        sign = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        covered = int(sign["bytes"])
        if (int(sign["inode"]) == inode and 0 < covered <= size and table.schema.equals(schema)
                and _manifest_end(manifest, covered) == sign["ends"]):
            return table.replace_schema_metadata(None), covered
    except (OSError, KeyError, ValueError, pa.ArrowException):
        pass  # none yet, or not one this code wrote: rebuilt from the manifest
    return schema.empty_table(), 0


def _record_in_manifest(paths: Paths, entries: list[dict[str, Any]],
                        check_existing: bool = True) -> None:
    """Append ``entries`` to the manifest. With ``check_existing`` (a retry repairing a run that
    died before this step) only those not there yet; a first try's entries are new by
    construction (checked under the same lock), so it skips reading the manifest again."""
    if check_existing and entries:
        manifest = _read_manifest(paths)
        seen = set(zip(manifest["file"].to_pylist(), manifest["sha256"].to_pylist(),
                       strict=True))
        entries = [e for e in entries if (e["file"], e["sha256"]) not in seen]
    if entries:
        with open(paths.landing / MANIFEST_NAME, "a") as handle:
            handle.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)
            handle.flush()
            os.fsync(handle.fileno())


#: A landing file to look at: (name, path, stat result).
Candidate = tuple[str, Path, os.stat_result]


def open_landing_file(path: Path) -> BinaryIO:
    """``path`` opened for reading only if it is a regular file itself: a symbolic link is
    refused even when it was swapped in after the folder was listed (``O_NOFOLLOW``), and so is
    anything else that is not a plain file (a FIFO would block, a device would read for ever).

    Raises:
        RefusedFile: not a regular file; the message says what it is.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        handle = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedFile("a symbolic link: only regular files inside the landing folder "
                              "are read") from None
        raise
    mode = os.fstat(handle).st_mode
    if not S_ISREG(mode):
        os.close(handle)
        raise RefusedFile(f"not a regular file ({_file_kind(mode)})")
    os.set_blocking(handle, True)
    return os.fdopen(handle, "rb")


class RefusedFile(OSError):
    """A landing entry that is not read: a symbolic link, or not a regular file."""


def _file_kind(mode: int) -> str:
    import stat

    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a plain file"


def _refusal(landing: Path, path: Path, mode: int) -> str | None:
    """Why the landing entry at ``path`` (``mode`` from ``lstat``) is not read, or None.

    Only regular files inside the landing folder are read: a symbolic link (to a file or a
    folder, inside the folder or out of it) is refused, so that whoever can create a link there
    cannot copy any file the service may read into the store and the quarantine.
    """
    if S_ISLNK(mode):
        return "a symbolic link: only regular files inside the landing folder are read"
    if not S_ISREG(mode):
        return f"not a regular file ({_file_kind(mode)})"
    relative = path.relative_to(landing)
    for depth in range(1, len(relative.parts)):  # a folder on the way that is a link
        folder = landing.joinpath(*relative.parts[:depth])
        if folder.is_symlink():
            return f"inside {folder.name}/, a symbolic link: only files inside the landing " \
                   "folder are read"
    return None


def _new_landing_files(paths: Paths, patterns: list[str], manifest: pa.Table,
                       recheck: bool = False
                       ) -> tuple[list[Candidate], int, dict[str, str]]:
    """The landing files matching ``patterns`` that the manifest does not know, by name.

    A delivered file is known by its name and inode, both read from the folder itself (one scan,
    no ``stat`` per file), so a run costs the new files, not the history. A file replaced under
    its name by a rename (written aside first, as the intake, the agent and the simulator
    deliver) has a new inode and is looked at again. One appended to or rewritten in place keeps
    its inode and is not, and one deleted and written again may get its inode back: for such
    producers, ``recheck`` stats every file instead and looks again at one whose size or
    modification time the manifest does not hold (the check entries written before inodes were
    kept always get). Names starting with '_' or '.' never match.

    Returns:
        ``(candidates, known, refused)``: the files to hash, by name, how many were known, and
        the entries matching ``patterns`` that are not read (symbolic links, anything but a
        regular file), name -> reason.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names: list[str] = []
    inodes: list[int] = []
    with os.scandir(paths.landing) as scan:
        for entry in scan:
            names.append(entry.name)
            inodes.append(entry.inode())
    plain = [p for p in patterns if "/" not in p and os.sep not in p]
    below = {path.name: path for pattern in patterns if pattern not in plain
             for path in paths.landing.glob(pattern)}  # rare: stat-ed
    for name, path in below.items():
        names.append(name)
        inodes.append(path.lstat().st_ino)
    table = pa.table({"file": pa.array(names, pa.string()), "inode": pa.array(inodes, pa.int64())})
    by_stat = manifest
    if not recheck:
        known_inodes = manifest.filter(pc.is_valid(manifest["inode"]))
        table = table.join(known_inodes.select(["file", "inode"]), keys=["file", "inode"],
                           join_type="left anti")
        by_stat = manifest.filter(pc.is_null(manifest["inode"]))
    known = len(names) - table.num_rows
    stamps = set(zip(by_stat["file"].to_pylist(), by_stat["size"].to_pylist(),
                     by_stat["mtime_ns"].to_pylist(), strict=True))
    match = re.compile("|".join(fnmatch.translate(p) for p in plain)).match if plain else None
    candidates: list[Candidate] = []
    refused: dict[str, str] = {}
    for name in sorted(set(table["file"].to_pylist())):
        if name[0] in "_." or not (name in below or (match and match(name))):
            continue
        path = below.get(name, paths.landing / name)
        try:
            stat = path.lstat()
        except FileNotFoundError:  # gone since the scan
            continue
        if reason := _refusal(paths.landing, path, stat.st_mode):
            refused[name] = reason
            continue
        if (name, stat.st_size, stat.st_mtime_ns) in stamps:
            known += 1
            continue
        candidates.append((name, path, stat))
    return candidates, known, refused


# --------------------------------------------------------------------------------------------


def ingest(config: IngestConfig) -> IngestResult:
    """Stage every landing file not yet processed as one batch (``config.run_id``).

    Args:
        config: where the home is, which batch to write, which files to read.

    Returns:
        The counts (``lines_in == records_parsed + feedback_events + quarantined``) and paths.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    paths = get_paths(config.home)
    run_id = config.run_id or default_run_id()
    staging_dir = paths.staging / run_id
    marker = staging_dir / BATCH_MARKER
    with file_lock(paths.landing / ".ingest.lock"):
        if marker.exists():  # a retry: the batch is written; make sure the manifest knows it
            saved = json.loads(marker.read_text())
            _record_in_manifest(paths, saved["manifest"])
            return IngestResult.model_validate(saved["result"])
        leftovers = remove_leftovers(paths)

        manifest = _read_manifest(paths)
        candidates, known, refused = _new_landing_files(paths, config.patterns, manifest,
                                                        recheck=config.recheck_delivered)
        # only new files are hashed; content staged before (a re-delivered copy) is skipped
        hashed: list[Candidate] = []
        digests: list[str] = []
        for candidate in candidates:
            try:
                digests.append(_sha256_regular(candidate[1]))
                hashed.append(candidate)
            except RefusedFile as exc:  # became a link or a FIFO since it was listed
                refused[candidate[0]] = str(exc)
        candidates = hashed
        staged_before = pc.is_in(pa.array(digests, pa.string()),
                                 value_set=manifest["sha256"]).to_pylist()
        delivered = set(manifest["file"].to_pylist())
        partial = _partial_lines(paths, [name for name, _, _ in candidates if name in delivered])
        quarantine_path = paths.quarantine / f"{run_id}-ingest.parquet"
        files: list[str] = []
        skipped: list[str] = []
        entries: list[dict[str, Any]] = []
        lines_in = 0
        seen: set[str] = set()
        with (ChunkedTableWriter(staging_dir / "records.parquet", STAGED_COLUMNS) as records,
              ChunkedTableWriter(staging_dir / "feedback.parquet", FEEDBACK_COLUMNS) as events,
              ChunkedTableWriter(quarantine_path, QUARANTINE_COLUMNS) as rejected):
            stager = _Stager(records, events, rejected, config.workloads_dir, partial)
            for (name, path, stat), digest, before in zip(candidates, digests, staged_before,
                                                           strict=True):
                if before or digest in seen:  # the same content twice in one delivery: once
                    skipped.append(name)
                    continue
                file_lines = 0
                try:
                    for number, raw, obj, error in read_landing_file(path):
                        file_lines += 1
                        stager.stage(name, number, raw, obj, error)
                except RefusedFile as exc:  # swapped for a link since it was hashed
                    refused[name] = str(exc)
                    continue
                seen.add(digest)
                files.append(name)
                lines_in += file_lines
                entries.append({"file": name, "sha256": digest, "run_id": run_id,
                                "lines": file_lines, "size": stat.st_size,
                                "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino})

            assert lines_in == records.count + events.count + rejected.count, "ingest lost lines"
            has_quarantine = rejected.commit(keep_empty=False)
            records.commit()
            events.commit()
        result = IngestResult(
            run_id=run_id, files=files, skipped_files=skipped, known_files=known,
            lines_in=lines_in, records_parsed=records.count, feedback_events=events.count,
            quarantined=rejected.count, staging_dir=str(staging_dir),
            quarantine_path=str(quarantine_path) if has_quarantine else None,
            pii_redacted=dict(sorted(stager.pii.items())), refused_files=refused,
            leftovers_removed=leftovers, quarantine_superseded=len(stager.superseded))
        payload = {"result": result.model_dump(mode="json"), "manifest": entries}
        write_bytes_atomic(marker, json.dumps(payload, indent=2).encode())  # the commit point
        _record_in_manifest(paths, entries, check_existing=False)
        _drop_superseded(stager.superseded)
    for name, reason in refused.items():
        _log.warning("landing entry %s not read: %s", name, reason)
    return result


def _sha256_regular(path: Path) -> str:
    """:func:`tasks.core.files.sha256_of` through :func:`open_landing_file` (never a link)."""
    return sha256_of(path, open_landing_file)


#: The files an ingest writes through a hidden temporary file (``.<name>.<pid>.<thread>.tmp``);
#: one left behind was being written when its run died.
_INGEST_TEMPORARIES = (("staging/*", ".records.parquet.*.tmp"),
                       ("staging/*", ".feedback.parquet.*.tmp"),
                       ("staging/*", f".{BATCH_MARKER}.*.tmp"),
                       ("quarantine", ".*-ingest.parquet.*.tmp"),
                       ("landing", f".{MANIFEST_INDEX_NAME}.*.tmp"))


def remove_leftovers(paths: Paths) -> int:
    """Remove what an ingest killed part-way left (call it under the ingest lock, which every
    writer of these files holds): hidden temporary files, and each staging folder without its
    commit marker together with its quarantine file. Nothing in them was committed: their
    landing files are not in the manifest, so this run reads them again.

    Returns:
        How many files were removed.
    """
    import shutil

    removed = 0
    for folder, pattern in _INGEST_TEMPORARIES:
        for path in paths.home.glob(f"{folder}/{pattern}"):
            path.unlink(missing_ok=True)
            removed += 1
    if paths.staging.is_dir():
        for batch in paths.staging.iterdir():
            if batch.is_dir() and not (batch / BATCH_MARKER).exists():
                removed += sum(1 for p in batch.rglob("*") if p.is_file())
                shutil.rmtree(batch, ignore_errors=True)
                orphan = paths.quarantine / f"{batch.name}-ingest.parquet"
                if orphan.exists():
                    orphan.unlink()
                    removed += 1
    if removed:
        _log.warning("removed %d file(s) an interrupted ingest had left", removed)
    return removed


#: Reasons of a line that did not parse: it may have been read before its file was complete.
_PARSE_FAILURES = ("invalid JSON", "invalid UTF-8")


def _partial_lines(paths: Paths, names: list[str]) -> dict[tuple[str, int], list[tuple[Path, str]]]:
    """Earlier ingest quarantine rows of the landing files ``names`` (delivered before, read
    again with ``recheck_delivered``) whose line did not parse: ``(file, line) -> [(quarantine
    file, raw)]``. Such a line may have been read while its producer was still writing it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    found: dict[tuple[str, int], list[tuple[Path, str]]] = {}
    if not names or not paths.quarantine.is_dir():
        return found
    for path in sorted(paths.quarantine.glob("*-ingest.parquet")):
        table = pq.read_table(path, columns=["source_file", "line", "reason", "raw"],
                              filters=pc.field("source_file").isin(names))
        for row in table.to_pylist():
            if (row["line"] is not None and row["raw"]
                    and str(row["reason"] or "").startswith(_PARSE_FAILURES)):
                found.setdefault((row["source_file"], row["line"]), []).append(
                    (path, row["raw"]))
    return found


def _drop_superseded(superseded: list[tuple[Path, str, int]]) -> None:
    """Rewrite each earlier quarantine file without its rows ``(file, line)`` whose whole line is
    now staged (a partial line is not data lost: it is a prefix of what was staged)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_file: dict[Path, set[tuple[str, int]]] = {}
    for path, name, line in superseded:
        by_file.setdefault(path, set()).add((name, line))
    for path, rows in by_file.items():
        table = pq.read_table(path)
        keep = [(row["source_file"], row["line"]) not in rows
                for row in table.select(["source_file", "line"]).to_pylist()]
        if any(keep):
            write_table_atomic(table.filter(pa.array(keep)), path)
        else:
            path.unlink(missing_ok=True)


class _Stager:
    """Redacts each line, then stages it as a record, a feedback event or a quarantined row.

    Redaction results are cached per string: most of a chat log's strings (the system prompt,
    tool definitions, role names, a route's arguments) repeat on every line, and each costs a
    dictionary look-up instead of the redactor's scans. The cache is bounded, and holds only what
    :func:`tasks.ingest.redact.redact` returned, so the output is the same as without it.
    """

    def __init__(self, records: ChunkedTableWriter, events: ChunkedTableWriter,
                 rejected: ChunkedTableWriter, workloads_dir: str | None = None,
                 partial: dict[tuple[str, int], list[tuple[Path, str]]] | None = None):
        self.records, self.events, self.rejected = records, events, rejected
        self.workloads_dir = workloads_dir
        self._decisions: dict[str | None, Decision | str] = {}
        #: earlier quarantined lines that did not parse, and those now staged whole
        self.partial = partial or {}
        self.superseded: list[tuple[Path, str, int]] = []
        self.pii: dict[str, int] = {}
        self._cached: Callable[[str], tuple[str, dict[str, int]]] = functools.lru_cache(
            maxsize=REDACT_CACHE_SIZE)(redact)

    def _decision_of(self, workload_id: str | None) -> Decision:
        """How ``workload_id``'s records hold their decision (its file's ``decision``); a
        workload without a file is read as the router's and quarantined by validation.

        Raises:
            RecordError: the workload's file fails its checks (the reason names the file and
                every problem): only that workload's records are quarantined, the rest staged.
        """
        if workload_id not in self._decisions:
            files = list_workloads(self.workloads_dir)
            try:
                self._decisions[workload_id] = (
                    read_workload(files[workload_id]).decision
                    if isinstance(workload_id, str) and workload_id in files else Decision())
            except WorkloadError as exc:
                self._decisions[workload_id] = f"workload file fails its checks: {exc}"
        decision = self._decisions[workload_id]
        if isinstance(decision, str):
            raise RecordError(decision)
        return decision

    def _redact(self, text: str) -> tuple[str, dict[str, int]]:
        return self._cached(text) if len(text) <= REDACT_CACHE_MAX_CHARS else redact(text)

    def stage(self, source: str, number: int, raw: str, obj: Any, error: str | None) -> None:
        raw, obj = self._redacted(raw, obj)
        where = {"source_file": source, "line": number, "raw": raw}
        if obj is not None and error is None:
            try:
                if obj.get("kind") == "feedback":
                    self.events.append({**flatten_feedback(obj), **where})
                elif obj.get("kind") not in (None, "record"):
                    raise RecordError(f"unknown kind {obj.get('kind')!r}")
                else:
                    self.records.append({**flatten_record(obj, self._decision_of), **where})
                for path, earlier in self.partial.get((source, number), ()):
                    if raw.startswith(earlier):  # read before its file was complete
                        self.superseded.append((path, source, number))
                return
            except RecordError as exc:
                error = str(exc)
        ids = obj if isinstance(obj, dict) else {}
        self.rejected.append({"stage": "ingest", "reason": error, **where,
                              "id": _maybe_str(ids.get("id")),
                              "client_id": _maybe_str(ids.get("client_id"))})

    def _redacted(self, raw: str, obj: Any) -> tuple[str, Any]:
        """``(raw, obj)`` with PII replaced, the counts per kind added to :attr:`pii`.

        A parsed object is redacted value by value, as :func:`tasks.ingest.redact.redact_record`
        does, and its raw text re-serialised from it (redacting JSON text directly could split an
        escape sequence); text that did not parse is redacted as is.
        """
        counts: dict[str, int] = {}
        if isinstance(obj, dict):
            obj = self._walk(obj, counts)
            if counts:
                raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
        else:
            raw, counts = self._redact(raw)
        for kind, n in counts.items():
            self.pii[kind] = self.pii.get(kind, 0) + n
        return raw, obj

    def _walk(self, value: dict[str, Any] | list[Any], total: dict[str, int]) -> Any:
        """``redact_record``'s walk (every string redacted but keys and the values of
        :data:`KEEP_FIELDS`), with the strings handled in the loop: most nodes are strings."""
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        out: dict[Any, Any] | list[Any] = {} if isinstance(value, dict) else [None] * len(value)
        for key, item in pairs:
            if isinstance(item, str):
                if not (key in KEEP_FIELDS and isinstance(value, dict)):
                    item, counts = self._redact(item)
                    if counts:
                        for kind, n in counts.items():
                            total[kind] = total.get(kind, 0) + n
            elif isinstance(item, dict | list):
                item = self._walk(item, total)
            out[key] = item
        return out


def _maybe_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def main(argv: list[str] | None = None) -> int:
    from tasks.core.settings import parse_config

    config = parse_config(IngestConfig, argv, prog="flywheel ingest",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    result = ingest(config)
    print(f"ingest {result.run_id}: {len(result.files)} file(s) read, "
          f"{result.known_files + len(result.skipped_files)} already staged")
    print(f"  lines in        {result.lines_in:>8}")
    print(f"  records         {result.records_parsed:>8}")
    print(f"  feedback events {result.feedback_events:>8}")
    print(f"  quarantined     {result.quarantined:>8}"
          + (f"  -> {result.quarantine_path}" if result.quarantine_path else ""))
    pii = ", ".join(f"{kind} {n}" for kind, n in result.pii_redacted.items()) or "none"
    print(f"  PII redacted    {sum(result.pii_redacted.values()):>8}  ({pii})")
    print(f"  staging         {result.staging_dir}")
    if result.quarantine_superseded:
        print(f"  superseded      {result.quarantine_superseded:>8}  (lines quarantined half "
              "written, now staged whole)")
    if result.leftovers_removed:
        print(f"  leftovers       {result.leftovers_removed:>8}  (files of an interrupted "
              "ingest, removed)")
    for name, reason in result.refused_files.items():
        print(f"refused: {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
