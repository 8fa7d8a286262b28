"""Validate: check staging batches with great-expectations and add what passes to the store.

Run it::

    flywheel validate --home /tmp/flywheel                       # every batch waiting
    flywheel validate --run-id 2026-11-26 --home /tmp/flywheel   # one batch (again)

Without ``--run-id`` (and in both DAGs) every staged batch not yet stored is validated, oldest
first, each exactly once (:func:`validate_waiting`): a batch whose validation was killed, or that a
concurrent run's ingest staged, is stored by the next run. A batch is stored once its result,
``staging/<run_id>/_stored.json``, is written, the last step of its validation; the whole run
holds the store's lock, so two runs take turns and the second finds only what the first left.
A killed run's hidden temporary files are removed by the next.

Each record of ``staging/<run_id>/records.parquet`` ends in exactly one bucket
(``records_in == stored + duplicates + quarantined``):

* **duplicates**: an exact copy of an earlier line of the batch (at-least-once delivery), or a
  re-delivery of a record the store already holds (same id and content; a rating added since
  still counts as feedback). Not stored again.
* **quarantined**: fails one or more expectations of the suite (:func:`build_suite`); the row goes
  to ``quarantine/<run_id>-validate.parquet`` with *every* failed expectation as its reason.
  Two different records with one id both fail ``id_unique`` when they meet in one batch, and a
  record whose id the store already holds with other content (:data:`REUSED_ID_FIELDS`) fails
  ``id_not_reused``: an id reused by a client is never silently dropped or overwritten.
* **stored**: appended to the store as ``store/records/part-<run_id>.parquet``.

Feedback (late events from ingestion and ratings inside records) is history, not an update in
place: ``store/feedback/part-<run_id>.parquet`` keeps every event, and :func:`load_store` joins the
latest one per id (by timestamp) onto the records. An event whose record is not stored yet is
*pending*: it stays in the history, is listed in ``store/feedback/pending.parquet``, and applies by
itself once its record arrives in a later run.

The validation result is kept in ``staging/<run_id>/validation.json`` (GX's own JSON) and
``validation.html`` (a small self-contained report: one row per expectation, with its unexpected
count and sample failing rows).

A retry with the same ``run_id`` rewrites the same part files, so the task is idempotent.

A record whose workload's file fails its checks is quarantined (``workload_file_valid``, with the
file and every problem); the other workloads' records are stored.

A run costs its batch, not the store's history: ids are looked up in an index of each store
table (:class:`IdIndex`, ``_ids.arrow`` beside the parts, brought up to date from the parts when
they change behind it), so only parts holding one of the batch's ids are read; the events still
pending are carried from run to run in ``pending.parquet`` rather than worked out from the whole
feedback history; and membership tests run in pyarrow.

When the share of the batch's record lines rejected (at ingestion or here) exceeds
``max_invalid_fraction``, the valid records are stored all the same and the rest quarantined: one
client's bad file never strands the other clients' good rows (ingestion has already marked the
files delivered, so nothing would pick them up again). The excess is an alarm naming the clients
and files at fault: with ``on_excess="fail"`` (the default, and the 15-minute ingest DAG) the run
then fails, a red task in Airflow; with ``"flag"`` (the nightly cycle) it returns with ``alarm``
set, which the cycle's report shows at the top, so one bad client does not stop tonight's cycle.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from tasks.core.clock import utc_now
from tasks.core.config import Paths, get_paths
from tasks.core.errors import UserError
from tasks.core.files import (
    atomic_path,
    file_lock,
    write_arrow_atomic,
    write_bytes_atomic,
    write_table_atomic,
)
from tasks.core.records import FLAT_COLUMNS
from tasks.ingest.landing import BATCH_MARKER, QUARANTINE_COLUMNS, STAGED_COLUMNS, rows_to_table
from tasks.ingest.store import (
    FEEDBACK_HISTORY,
    feedback_schema,
    isin_ids,
    read_parts,
    record_schema,
    text_array,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

PENDING_NAME = "pending.parquet"
#: A batch's validation result, written last in ``staging/<run_id>/``: the batch is stored.
STORED_MARKER = "_stored.json"
#: In ``staging/``: batches validated before stored markers existed have been marked.
ADOPTED_FLAG = "_stored_markers"
#: Held by every validation for its whole run, in ``store/``.
STORE_LOCK = ".store.lock"


class ValidationFailed(UserError, RuntimeError):
    """Too much of a batch is invalid; the message names the clients and files at fault."""


class MissingBatch(UserError, FileNotFoundError):
    """The staging batch named does not exist, or is not complete."""


class ValidateConfig(BaseModel):
    """Settings of ``flywheel validate``."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    run_id: str | None = Field(None, min_length=1, max_length=200,
                               description="Staging batch to validate (default: the newest one)")
    experts: list[str] | None = Field(None, min_length=1, max_length=1000, description=(
        "Allowed routes for every workload alike (none: each record's own workload file's "
        "experts, and a record of a workload without a file is quarantined)"))
    workloads_dir: str | None = Field(None, description=(
        "Folder of workload files (default $FLYWHEEL_WORKLOADS; the shipped ones are found "
        "too)"))
    max_query_chars: int = Field(4000, ge=1, le=1_000_000,
                                 description="Longest query accepted, in characters")
    max_latency_ms: float = Field(600_000.0, gt=0, le=86_400_000,
                                  description="Largest latency_ms / ttft_ms accepted")
    min_timestamp: datetime = Field(datetime(2000, 1, 1, tzinfo=UTC),
                                    description="Earliest record timestamp accepted")
    max_future_days: float = Field(1.0, ge=0, le=365,
                                   description="How far past now a timestamp may be (clock skew)")
    max_invalid_fraction: float = Field(0.2, ge=0.0, le=1.0,
                                        description="Raise the alarm when a larger share of the "
                                                    "batch is quarantined (the valid records "
                                                    "are stored either way)")
    on_excess: Literal["fail", "flag"] = Field(
        "fail", description="Over max_invalid_fraction, after storing the valid records: 'fail' "
                            "the run (naming the clients and files at fault) or 'flag' it "
                            "(the result's alarm; the cycle's report shows it)")

    @field_validator("min_timestamp")
    @classmethod
    def as_utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class ExpectationSummary(BaseModel):
    success: bool
    unexpected_count: int = Field(ge=0)


class ValidateResult(BaseModel):
    """What one validation run did (a small XCom value)."""

    run_id: str
    records_in: int = Field(ge=0, description="Records in the staging batch")
    stored: int = Field(ge=0, description="New records appended to the store")
    duplicates: int = Field(ge=0, description="Copies within the batch or ids already stored")
    quarantined: int = Field(ge=0, description="Records failing one or more expectations")
    invalid_fraction: float = Field(
        ge=0.0, le=1.0, description="Share of the batch's record lines rejected, at ingest or "
                                    "here: (ingest + validate quarantined) / (lines_in - "
                                    "feedback events)")
    feedback_merged: int = Field(ge=0, description="Feedback events now joined to a stored "
                                                   "record (this run's and formerly pending ones)")
    feedback_pending: int = Field(ge=0, description="Events still waiting for their record")
    expectations: dict[str, ExpectationSummary] = Field(
        description="Expectation name -> success and unexpected count")
    validation_path: str = Field(description="GX validation result (JSON)")
    validation_html_path: str | None = Field(None, description="The same result as a small "
                                                               "self-contained HTML report")
    quarantine_path: str | None = Field(None, description="Quarantine file, if any row failed")
    store_part: str | None = Field(None, description="Store part written by this run (none "
                                                     "when nothing new was stored)")
    alarm: str | None = Field(None, description="Set when more than max_invalid_fraction of the "
                                                "batch was rejected: by whom, and where to look")


class ValidateRun(BaseModel):
    """What one run over the waiting batches did: each batch's result and the totals (the
    fields a cycle's report reads, as for one batch)."""

    run_id: str | None = Field(description="This run's own batch, if it named one, else the "
                                           "last batch validated")
    batches: list[ValidateResult] = Field(description="Each batch validated, oldest first (and "
                                                      "the run's own batch if another run "
                                                      "stored it first)")
    records_in: int = Field(ge=0, description="Records in those batches")
    stored: int = Field(ge=0, description="New records appended to the store")
    duplicates: int = Field(ge=0, description="Copies within a batch or ids already stored")
    quarantined: int = Field(ge=0, description="Records failing one or more expectations")
    feedback_merged: int = Field(ge=0, description="Feedback events joined to a stored record")
    feedback_pending: int = Field(ge=0, description="Events still waiting for their record")
    leftovers_removed: int = Field(0, ge=0, description="Hidden temporary files a killed "
                                                        "validation had left, removed")
    validation_path: str | None = Field(None, description="GX result of the run's own (or last) "
                                                          "batch")
    validation_html_path: str | None = Field(None, description="The same as HTML")
    alarm: str | None = Field(None, description="Every batch's alarm, one per line")

    @classmethod
    def of(cls, results: list[ValidateResult], own: str | None, leftovers: int) -> ValidateRun:
        main = next((r for r in results if r.run_id == own), results[-1] if results else None)
        alarms = [r.alarm for r in results if r.alarm]
        return cls(
            run_id=own or (main.run_id if main else None), batches=results,
            records_in=sum(r.records_in for r in results),
            stored=sum(r.stored for r in results),
            duplicates=sum(r.duplicates for r in results),
            quarantined=sum(r.quarantined for r in results),
            feedback_merged=sum(r.feedback_merged for r in results),
            feedback_pending=results[-1].feedback_pending if results else 0,
            leftovers_removed=leftovers,
            validation_path=main.validation_path if main else None,
            validation_html_path=main.validation_html_path if main else None,
            alarm="\n".join(alarms) or None)


# --------------------------------------------------------------------------------------------
# the expectation suite


def batch_workloads(config: ValidateConfig, workload_ids: set[str]
                    ) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """The experts of each workload of the batch that has a file, and the workloads whose file
    fails its checks (id -> the file's path and every problem): their records are quarantined
    with that reason (:data:`WORKLOAD_FILE_VALID`), the other workloads' records go on."""
    from tasks.core.workload import WorkloadError, list_workloads, read_workload

    files = list_workloads(config.workloads_dir)
    experts: dict[str, tuple[str, ...]] = {}
    broken: dict[str, str] = {}
    for workload_id in sorted(w for w in workload_ids if w in files):
        try:
            experts[workload_id] = read_workload(files[workload_id]).expert_names
        except WorkloadError as exc:
            broken[workload_id] = str(exc)
    return experts, broken


def build_suite(config: ValidateConfig, now: datetime | None = None,
                workloads: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The expectations, by name, that a flattened record must meet.

    Timestamps are checked on ``_timestamp``, the parsed value (NaT when missing or not ISO 8601).
    Routes are checked against the record's own workload's experts (``workloads``: id -> experts,
    :func:`batch_workloads`), as pairs of (workload_id, route), and a record whose workload has
    no file fails ``workload_known``; ``config.experts`` instead checks every route against one
    list.
    """
    import great_expectations as gx

    E = gx.expectations
    latest = (now or utc_now()) + timedelta(days=config.max_future_days)
    suite: dict[str, Any] = {
        "id_not_null": E.ExpectColumnValuesToNotBeNull(column="id"),
        "id_unique": E.ExpectColumnValuesToBeUnique(column="id"),
        "timestamp_parseable": E.ExpectColumnValuesToNotBeNull(column="_timestamp"),
        "timestamp_in_bounds": E.ExpectColumnValuesToBeBetween(
            column="_timestamp", min_value=config.min_timestamp, max_value=latest),
        "workload_id_not_null": E.ExpectColumnValuesToNotBeNull(column="workload_id"),
        "workload_id_non_empty": E.ExpectColumnValuesToMatchRegex(column="workload_id",
                                                                  regex=r"\S"),
        "client_id_not_null": E.ExpectColumnValuesToNotBeNull(column="client_id"),
        "client_id_non_empty": E.ExpectColumnValuesToMatchRegex(column="client_id", regex=r"\S"),
        "route_in_experts": (
            E.ExpectColumnValuesToBeInSet(column="route", value_set=list(config.experts))
            if config.experts is not None else E.ExpectColumnPairValuesToBeInSet(
                column_A="workload_id", column_B="route", ignore_row_if="neither",
                value_pairs_set=[(w, e) for w, experts in (workloads or {}).items()
                                 for e in experts] or [("", "")])),
        "latency_ms_not_null": E.ExpectColumnValuesToNotBeNull(column="latency_ms"),
        "latency_ms_in_range": E.ExpectColumnValuesToBeBetween(
            column="latency_ms", min_value=0, max_value=config.max_latency_ms),
        "ttft_ms_in_range": E.ExpectColumnValuesToBeBetween(
            column="ttft_ms", min_value=0, max_value=config.max_latency_ms),
        "rating_in_set": E.ExpectColumnValuesToBeInSet(column="rating", value_set=[-1, 1]),
        "query_non_empty": E.ExpectColumnValuesToMatchRegex(column="query", regex=r"\S"),
        "query_length": E.ExpectColumnValueLengthsToBeBetween(
            column="query", min_value=1, max_value=config.max_query_chars),
    }
    if config.experts is None:
        suite["workload_known"] = E.ExpectColumnValuesToBeInSet(
            column="workload_id", value_set=sorted(workloads or {}) or [""])
    for name, expectation in suite.items():
        expectation.meta = {"name": name}
    return suite


#: What a record is, beyond its id: a stored id arriving again with any of these different is a
#: reused id (quarantined), not a re-delivery. Feedback fields are left out: a record re-sent
#: with a rating it did not have is the same record, rated.
REUSED_ID_FIELDS = ("workload_id", "client_id", "model", "query", "route", "latency_ms", "ttft_ms")
#: The store-side check's name, as the quarantine reason and the validation report show it.
ID_NOT_REUSED = "id_not_reused"
#: A record whose workload's file fails its checks; the reason carries the file and the problem.
WORKLOAD_FILE_VALID = "workload_file_valid"

#: Columns the suite reads; only these are handed to GX.
SUITE_COLUMNS = ("id", "_timestamp", "workload_id", "client_id", "route", "latency_ms", "ttft_ms",
                 "rating", "query")
#: Rows per GX run. GX's pandas engine needs several times a frame's size while it validates, so a
#: large batch is validated in partitions of about this many rows (see :func:`run_suite`).
SUITE_CHUNK_ROWS = 100_000


def run_suite(frame: pd.DataFrame, config: ValidateConfig, chunk_rows: int | None = None,
              workloads: dict[str, tuple[str, ...]] | None = None
              ) -> tuple[dict[int, list[str]], dict[str, ExpectationSummary], dict[str, Any]]:
    """Run the suite on ``frame`` (a unique integer index) in an ephemeral GX context.

    A batch of more than ``chunk_rows`` rows is validated in partitions by a hash of ``id``: every
    row of one id lands in the same partition, so ``id_unique`` is as exact as on the whole batch,
    and memory is bounded by the partition. Each row is checked once either way.

    Returns:
        ``(failures, summary, result_json)``: failed expectation names by row index, the
        per-expectation summary, and GX's validation result as JSON (one result per partition,
        under ``partitions``, when there are several).
    """
    import pandas as pd

    chunk_rows = chunk_rows or SUITE_CHUNK_ROWS
    columns = frame[list(SUITE_COLUMNS)]
    parts = -(-len(frame) // chunk_rows)
    if parts <= 1:
        return _run_suite_once(columns, config, workloads)
    bucket = pd.util.hash_array(frame["id"].fillna("").to_numpy(dtype=object)) % parts
    failures: dict[int, list[str]] = {}
    summary: dict[str, ExpectationSummary] = {}
    results = []
    for part in range(parts):
        part_failures, part_summary, part_json = _run_suite_once(columns[bucket == part], config,
                                                                 workloads)
        failures.update(part_failures)
        for name, item in part_summary.items():
            seen = summary.get(name, ExpectationSummary(success=True, unexpected_count=0))
            summary[name] = ExpectationSummary(
                success=seen.success and item.success,
                unexpected_count=seen.unexpected_count + item.unexpected_count)
        results.append(part_json)
    return failures, summary, {
        "success": all(r.get("success") for r in results),
        "partitioned_by": f"hash(id) mod {parts}", "partitions": results}


def _run_suite_once(frame: pd.DataFrame, config: ValidateConfig,
                    workloads: dict[str, tuple[str, ...]] | None = None
                    ) -> tuple[dict[int, list[str]], dict[str, ExpectationSummary], dict[str, Any]]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("staging")
             .add_dataframe_asset("records")
             .add_batch_definition_whole_dataframe("batch"))
    suite = gx.ExpectationSuite(name="flywheel_records")
    for expectation in build_suite(config, workloads=workloads).values():
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="records", data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame},
                            result_format={"result_format": "COMPLETE"})

    failures: dict[int, list[str]] = {}
    summary: dict[str, ExpectationSummary] = {}
    for item in result.results:
        name = item.expectation_config.meta["name"]
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {name} could not run: "
                               f"{item.exception_info.get('exception_message')}")
        unexpected = item.result.get("unexpected_index_list") or []
        for index in unexpected:
            failures.setdefault(int(index), []).append(name)
        summary[name] = ExpectationSummary(success=bool(item.success),
                                           unexpected_count=len(unexpected))
    return failures, summary, result.to_json_dict()


def render_html(run_id: str, summary: dict[str, ExpectationSummary],
                failures: dict[int, list[str]], work: pd.DataFrame,
                config: ValidateConfig, samples: int = 5) -> str:
    """The validation result as a self-contained HTML page (no scripts, no external assets).

    One table row per expectation: its name and GX type, success, unexpected count and up to
    ``samples`` failing rows (``source_file:line`` and id).
    """
    from html import escape

    kinds = {name: type(e).__name__ for name, e in build_suite(config).items()}
    failing: dict[str, list[str]] = {}
    for index in sorted(failures):
        row = work.loc[index]
        where = f"{row.get('source_file')}:{row.get('line')} id={row.get('id')!r}"
        for name in failures[index]:
            failing.setdefault(name, []).append(where)
    passed = sum(item.success for item in summary.values())
    rows = []
    for name, item in summary.items():
        sample = failing.get(name, [])[:samples]
        rows.append(
            f'<tr class="{"ok" if item.success else "fail"}"><td>{escape(name)}</td>'
            f"<td>{escape(kinds.get(name, ''))}</td>"
            f"<td>{'yes' if item.success else 'NO'}</td><td>{item.unexpected_count}</td>"
            f"<td>{'<br>'.join(escape(s) for s in sample)}</td></tr>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>Validation {escape(run_id)}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:4px 8px;text-align:left}"
        "tr.fail{background:#fdd}tr.ok{background:#dfd}</style></head><body>"
        f"<h1>Validation of batch {escape(run_id)}</h1>"
        f"<p>{len(work)} records checked; {passed} of {len(summary)} expectations met; "
        f"{len(failures)} records failed at least one.</p>"
        "<table><tr><th>expectation</th><th>type</th><th>success</th>"
        "<th>unexpected count</th><th>sample failing rows</th></tr>"
        + "".join(rows) + "</table></body></html>\n")


# --------------------------------------------------------------------------------------------
# the store


def _to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    import pandas as pd
    import pyarrow as pa

    frame = frame.reindex(columns=schema.names).copy()
    if "timestamp" in frame:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("us")
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def _write_part(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    """This run's part of a store table; none when empty (a retry removes a stale one)."""
    if len(frame):
        write_table_atomic(_to_table(frame, schema), path)
    else:
        path.unlink(missing_ok=True)


def _raw_batches(staged_path: Path, rows: Any, batch_rows: int = 50_000
                 ) -> Iterator[tuple[Any, pa.Array]]:
    """``(positions, raw)`` per staged batch for the staged rows at positions ``rows`` (ascending):
    the ``raw`` column is read one batch at a time and taken in pyarrow, never as Python
    strings."""
    import numpy as np
    import pyarrow.parquet as pq

    rows = np.asarray(rows, dtype=np.int64)
    offset = 0
    for batch in pq.ParquetFile(staged_path).iter_batches(batch_size=batch_rows,
                                                           columns=["raw"]):
        lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
        if hi > lo:
            yield rows[lo:hi], batch.column(0).take(rows[lo:hi] - offset)
        offset += batch.num_rows


def _raw_texts(staged_path: Path, rows: Any) -> Iterator[tuple[int, str | None]]:
    """``(row, raw)`` for the staged rows at positions ``rows`` (ascending)."""
    for positions, raw in _raw_batches(staged_path, rows):
        yield from zip(positions.tolist(), raw.to_pylist(), strict=True)


def _write_records_part(frame: pd.DataFrame, staged_path: Path, path: Path,
                        chunk_rows: int = 50_000) -> None:
    """This run's records part: ``frame`` (no ``raw``; ``_row`` ascending) with each row's raw
    text from the staged file, written one staged batch of ``chunk_rows`` at a time and renamed
    into place; none when empty."""
    import pyarrow.parquet as pq

    if not len(frame):
        path.unlink(missing_ok=True)
        return
    schema = record_schema()
    raw_at = schema.get_field_index("raw")
    start = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for positions, raw in _raw_batches(staged_path, frame["_row"].to_numpy(),
                                               batch_rows=chunk_rows):
                chunk = frame.iloc[start:start + len(positions)]
                start += len(positions)
                assert (chunk["_row"].to_numpy() == positions).all(), "raw out of step"
                writer.write_table(_to_table(chunk, schema).set_column(raw_at, "raw", raw))
        assert start == len(frame), "raw out of step"


class IdIndex:
    """Which part file of a store table holds each id: ``_ids.arrow`` beside the parts.

    The store grows by one part per run, so looking an id up part by part costs every run a read
    of every part. The index is the ``id`` column of all parts with each row's part name, in
    Arrow's file format (mapped from disk, looked up by pyarrow's hash join), so a run reads only
    the parts that hold one of its ids. It is derived data: it records each part's size and
    modification time, and a part added, rewritten or removed behind its back (a retry, an older
    version of this code, a hand edit) is read again, or dropped, when the index is opened.

    Args:
        folder: the store table's folder (``store/records`` or ``store/feedback``).
        save: write the index back when it had to be brought up to date (only under the store's
            lock; readers outside it refresh their copy in memory).
    """

    NAME = "_ids.arrow"

    def __init__(self, folder: Path, save: bool = True):
        import pyarrow as pa
        import pyarrow.compute as pc

        self.folder, self.path = folder, folder / self.NAME
        self.table, self.covered = self._load()
        on_disk = {}
        for part in folder.glob("part-*.parquet"):
            stat = part.stat()
            on_disk[part.name] = [stat.st_size, stat.st_mtime_ns]
        stale = sorted(name for name, sign in on_disk.items() if self.covered.get(name) != sign)
        gone = sorted(set(self.covered) - set(on_disk))
        if stale or gone:
            keep = pc.invert(pc.is_in(self.table["part"], value_set=pa.array(stale + gone,
                                                                             pa.string())))
            self.table = pa.concat_tables([self.table.filter(keep),
                                           *(self._part_ids(name) for name in stale)])
            self.covered = on_disk
            if save:
                self._save()

    @staticmethod
    def _schema() -> pa.Schema:
        import pyarrow as pa

        return pa.schema([("id", pa.string()), ("part", pa.string())])

    def _load(self) -> tuple[pa.Table, dict[str, list[int]]]:
        import pyarrow as pa

        try:
            table = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()
            covered = json.loads(table.schema.metadata[b"covered"])
            if table.schema.remove_metadata().equals(self._schema()):
                return table.replace_schema_metadata(None), covered
        except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
            pass  # none yet, or unreadable: rebuilt from the parts
        return self._schema().empty_table(), {}

    def _save(self) -> None:
        write_arrow_atomic(self.table.replace_schema_metadata(
            {"covered": json.dumps(self.covered)}), self.path)

    def _part_ids(self, name: str) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = pq.read_table(self.folder / name, columns=["id"]).column(0)
        return pa.table({"id": ids.cast(pa.string()),
                         "part": pa.repeat(pa.scalar(name, pa.string()), len(ids))})

    def _hits(self, ids: Any, exclude: str) -> pa.Table:
        import pyarrow.compute as pc

        value_set = text_array(ids)
        if not len(value_set) or not self.table.num_rows:
            return self._schema().empty_table()
        found = pc.and_(pc.is_in(self.table["id"], value_set=value_set, skip_nulls=True),
                        pc.not_equal(self.table["part"], exclude))
        return self.table.filter(found)

    def found(self, ids: Any, exclude: str) -> pa.Array:
        """Those of ``ids`` that a part other than ``exclude`` holds."""
        return text_array(self._hits(ids, exclude)["id"]).unique()

    def rows(self, ids: Any, exclude: str, schema: pa.Schema,
             columns: list[str] | None = None) -> pd.DataFrame:
        """The rows whose id is one of ``ids`` in the parts other than ``exclude`` (only the
        parts holding one are read)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        columns = columns or schema.names
        hits = self._hits(ids, exclude)
        value_set = text_array(hits["id"]).unique()
        tables = [pq.read_table(self.folder / name, columns=columns,
                                filters=pc.field("id").isin(value_set))
                  for name in sorted(set(hits["part"].to_pylist()))]
        return pa.concat_tables(tables or [schema.empty_table().select(columns)]).to_pandas()

    def update(self, part: str) -> None:
        """Bring ``part`` (just written, or removed) into the index, and save it."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tables = [self.table.filter(pc.not_equal(self.table["part"], part))]
        self.covered.pop(part, None)
        path = self.folder / part
        if path.exists():
            stat = path.stat()
            tables.append(self._part_ids(part))
            self.covered[part] = [stat.st_size, stat.st_mtime_ns]
        self.table = pa.concat_tables(tables)
        self._save()


def _reused_ids(work: pd.DataFrame, index: IdIndex, exclude: str) -> list[int]:
    """Rows of ``work`` whose id the store (all parts but ``exclude``) already holds with other
    content: a different timestamp or any of :data:`REUSED_ID_FIELDS`."""
    import pandas as pd

    stored = index.rows(work["id"].dropna(), exclude, record_schema(),
                        columns=["id", "timestamp", *REUSED_ID_FIELDS])
    stored = stored.drop_duplicates(subset="id").set_index("id")
    mine = work[isin_ids(work["id"], stored.index)]
    if not len(mine):
        return []
    theirs = stored.loc[mine["id"]]
    pairs = [(mine["_timestamp"].dt.floor("us"), theirs["timestamp"])]
    pairs += [(mine[c], theirs[c]) for c in REUSED_ID_FIELDS]
    differs = pd.Series(False, index=mine.index)
    for ours, stored_values in pairs:
        for i, (a, b) in enumerate(zip(ours.tolist(), stored_values.tolist(), strict=True)):
            if not (pd.isna(a) and pd.isna(b)) and a != b:
                differs.iloc[i] = True
    return [int(i) for i in mine.index[differs]]


def _inline_events(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Ratings carried inside records, as feedback events timed at the record."""
    rated = frame[frame["rating"].notna()]
    return rated.assign(
        timestamp=rated["_timestamp"], source=rated["feedback_source"].fillna("user"),
        comment=rated["feedback_comment"], origin="inline", run_id=run_id,
    ).reindex(columns=list(FEEDBACK_HISTORY))


def _event_keys(events: pd.DataFrame) -> pd.Series:
    """What makes two feedback events the same event: id, time, rating, source and comment."""
    import pandas as pd

    stamp = pd.to_datetime(events["timestamp"], utc=True).dt.floor("us").astype(str)
    comment = events["comment"].astype(object).where(events["comment"].notna(), "")
    return pd.Series(list(zip(events["id"], stamp, events["rating"].astype(float),
                              events["source"].astype(object), comment, strict=True)),
                     index=events.index, dtype=object)


def _stored_marker(paths: Paths, run_id: str) -> Path:
    return paths.staging / run_id / STORED_MARKER


def waiting_batches(paths: Paths) -> list[str]:
    """The staged batches not yet stored, oldest first (by their commit marker's time): a batch
    whose validation died part-way, or that a concurrent run's ingest staged, included."""
    _adopt_earlier_batches(paths)
    if not paths.staging.is_dir():
        return []
    waiting = []
    for batch in paths.staging.iterdir():
        marker = batch / BATCH_MARKER
        if batch.is_dir() and not (batch / STORED_MARKER).exists():
            try:
                waiting.append((marker.stat().st_mtime_ns, batch.name))
            except FileNotFoundError:  # being staged: not committed yet
                continue
    return [name for _, name in sorted(waiting)]


def _adopt_earlier_batches(paths: Paths) -> None:
    """Once per home: mark as stored the batches that code before :data:`STORED_MARKER` existed
    validated (those with a ``validation.json``), so they are not validated again. Later, only
    the marker counts, so a batch whose validation dies after ``validation.json`` waits."""
    flag = paths.staging / ADOPTED_FLAG
    if flag.exists():
        return
    if paths.staging.is_dir():
        for batch in paths.staging.iterdir():
            if (batch / "validation.json").exists() and not (batch / STORED_MARKER).exists():
                write_bytes_atomic(batch / STORED_MARKER, json.dumps(
                    {"run_id": batch.name, "adopted": "validated before stored markers"}
                ).encode())
    write_bytes_atomic(flag, b"batches validated before stored markers are marked stored\n")


def stored_result(paths: Paths, run_id: str) -> ValidateResult | None:
    """What the validation of ``run_id`` stored, if it finished (None for a batch adopted from
    before stored markers, or not stored yet)."""
    marker = _stored_marker(paths, run_id)
    if not marker.exists():
        return None
    saved = json.loads(marker.read_text())
    return None if "adopted" in saved else ValidateResult.model_validate(saved)


#: Written by validation, as its hidden temporary files, under the store's lock.
_VALIDATE_TEMPORARIES = ("store/records/.*.tmp", "store/feedback/.*.tmp",
                         "staging/*/.validation.*.tmp", f"staging/*/.{STORED_MARKER}.*.tmp",
                         f"staging/.{ADOPTED_FLAG}.*.tmp",
                         "quarantine/.*-validate.parquet.*.tmp")


def _remove_leftovers(paths: Paths) -> int:
    """Remove the hidden temporary files of a validation killed part-way (under the store's
    lock, which every writer of them holds); returns how many."""
    removed = 0
    for pattern in _VALIDATE_TEMPORARIES:
        for path in paths.home.glob(pattern):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _pending_before(feedback_dir: Path, part: str) -> pd.DataFrame:
    """The feedback events waiting for their record before this run: ``pending.parquet``, or,
    in a store that has none yet, every event of the other parts (the first run works it out)."""
    import pandas as pd

    pending = feedback_dir / PENDING_NAME
    if pending.exists():
        return pd.read_parquet(pending)
    events = read_parts(feedback_dir, feedback_schema(), exclude=part)
    return events[~_event_keys(events).duplicated()]


def _blame(invalid: pd.DataFrame) -> str:
    """Which clients and files the invalid rows came from, worst first."""
    groups = (invalid.fillna({"client_id": "<no client_id>"})
              .groupby(["client_id", "source_file"], dropna=False).size()
              .sort_values(ascending=False, kind="mergesort"))
    return ", ".join(f"client {client!r} in {source} ({count})"
                     for (client, source), count in groups.head(5).items())


# --------------------------------------------------------------------------------------------


def validate(config: ValidateConfig) -> ValidateResult:
    """Validate staging batch ``config.run_id`` (again, if it was stored before: the same part
    files are rewritten) and store its valid new records.

    Args:
        config: the batch, the allowed experts, the bounds and the failure threshold.

    Returns:
        The counts (``records_in == stored + duplicates + quarantined``) and paths.

    Raises:
        ValidationFailed: the invalid fraction exceeds ``config.max_invalid_fraction`` and
            ``config.on_excess`` is ``"fail"`` (after the valid records are stored and the rest
            quarantined).
        MissingBatch: the staging batch does not exist (or no ``run_id`` was given).
    """
    paths = get_paths(config.home)
    if not config.run_id:
        raise MissingBatch("name the batch (--run-id), or validate every waiting batch with "
                           "validate_waiting")
    with file_lock(paths.store / STORE_LOCK):
        _remove_leftovers(paths)
        result = _validate_batch(paths, config, config.run_id)
    if result.alarm and config.on_excess == "fail":
        raise ValidationFailed(result.alarm)
    return result


def validate_waiting(config: ValidateConfig) -> ValidateRun:
    """Validate every staged batch not yet stored, oldest first, each exactly once: the batch a
    killed validation left, and one a concurrent ingest staged, included. Runs under the store's
    lock, so two at once take turns and the second finds only what the first left.

    Args:
        config: the settings; ``run_id``, when given, names this run's own batch, whose result
            is reported even if another run stored it first.

    Returns:
        Each batch's result, oldest first, and the totals.

    Raises:
        ValidationFailed: with ``on_excess="fail"``, a batch was over ``max_invalid_fraction``
            (raised after every waiting batch is stored).
    """
    paths = get_paths(config.home)
    with file_lock(paths.store / STORE_LOCK):
        leftovers = _remove_leftovers(paths)
        results = [_validate_batch(paths, config, run_id) for run_id in waiting_batches(paths)]
    own = config.run_id
    if own and own not in {r.run_id for r in results}:
        if (earlier := stored_result(paths, own)) is not None:  # stored by a concurrent run
            results.append(earlier)
        elif not (paths.staging / own / BATCH_MARKER).exists():
            raise MissingBatch(f"staging batch {paths.staging / own} is missing or incomplete: "
                               f"run `flywheel ingest --run-id {own}` first")
    run = ValidateRun.of(results, own, leftovers)
    if run.alarm and config.on_excess == "fail":
        raise ValidationFailed(run.alarm)
    return run


def _validate_batch(paths: Paths, config: ValidateConfig, run_id: str) -> ValidateResult:
    """One batch, under the store's lock (held by the caller); its result is written last as
    ``_stored.json``, the mark that it needs no validation again."""
    import pandas as pd
    import pyarrow as pa

    staging = paths.staging / run_id
    if not (staging / BATCH_MARKER).exists():
        raise MissingBatch(f"staging batch {staging} is missing or incomplete: "
                           f"run `flywheel ingest --run-id {run_id}` first")
    # ``raw`` is most of a batch's bytes: it stays on disk and is read back, a batch at a time,
    # only for the rows that are quarantined or stored (``_row`` is the staged row position).
    staged_path = staging / "records.parquet"
    batch = pd.read_parquet(staged_path, columns=[c for c in STAGED_COLUMNS if c != "raw"])
    batch["_row"] = range(len(batch))
    events = pd.read_parquet(staging / "feedback.parquet")
    records_in = len(batch)

    # 1. Exact copies inside the batch (at-least-once delivery): keep the first.
    content = [c for c in FLAT_COLUMNS if c not in ("source_file", "raw")]
    copies = batch.duplicated(subset=content, keep="first")
    work = batch[~copies].reset_index(drop=True)
    work["_timestamp"] = pd.to_datetime(work["timestamp"], utc=True, errors="coerce",
                                        format="ISO8601")

    # 2. The expectation suite.
    validation_path = staging / "validation.json"
    workloads, broken = (None, {}) if config.experts is not None else batch_workloads(
        config, set(work["workload_id"].dropna()))
    if len(work):
        failures, summary, result_json = run_suite(work, config, workloads=workloads)
    else:
        failures = {}
        summary = {name: ExpectationSummary(success=True, unexpected_count=0)
                   for name in build_suite(config)}
        result_json = {"success": True, "results": [], "note": "empty batch"}
    part = f"part-{run_id}.parquet"
    records_dir, feedback_dir = paths.store / "records", paths.store / "feedback"
    reused = _reused_ids(work, IdIndex(records_dir, save=False), part)
    for index in reused:
        failures.setdefault(index, []).append(ID_NOT_REUSED)
    summary[ID_NOT_REUSED] = ExpectationSummary(success=not reused, unexpected_count=len(reused))
    unusable = work.index[work["workload_id"].isin(list(broken))] if broken else []
    for index in unusable:
        failures.setdefault(int(index), []).append(
            f"{WORKLOAD_FILE_VALID} ({broken[work.at[index, 'workload_id']]})")
    if broken:
        summary[WORKLOAD_FILE_VALID] = ExpectationSummary(success=False,
                                                          unexpected_count=len(unusable))
    write_bytes_atomic(validation_path, json.dumps(result_json, indent=1, default=str).encode())
    validation_html_path = staging / "validation.html"
    write_bytes_atomic(validation_html_path,
                       render_html(run_id, summary, failures, work, config).encode())
    failed = work.index.isin(list(failures))
    invalid = work[failed]
    quarantine_path = paths.quarantine / f"{run_id}-validate.parquet"
    if len(invalid):
        raws = dict(_raw_texts(staged_path, invalid["_row"].to_numpy()))
        rows = [{"stage": "validate", "reason": "; ".join(failures[i]),
                 "source_file": r.source_file, "line": r.line, "raw": raws[row], "id": r.id,
                 "client_id": r.client_id}
                for i, r, row in zip(invalid.index, invalid.itertuples(index=False),
                                     invalid["_row"], strict=True)]
        write_table_atomic(rows_to_table(rows, QUARANTINE_COLUMNS), quarantine_path)
    else:
        quarantine_path.unlink(missing_ok=True)
    # The share of the batch's lines rejected at either stage: a client sending unparseable
    # lines fails the run as surely as one sending bad values.
    staged = json.loads((staging / BATCH_MARKER).read_text())["result"]
    lines_in = staged["lines_in"] - staged["feedback_events"]
    rejected = staged["quarantined"] + len(invalid)
    invalid_fraction = rejected / lines_in if lines_in else 0.0
    alarm = None
    if invalid_fraction > config.max_invalid_fraction:
        at_ingest = paths.quarantine / f"{run_id}-ingest.parquet"
        culprits = pd.concat([pd.read_parquet(at_ingest) if at_ingest.exists() else None,
                              invalid[["client_id", "source_file"]]])
        alarm = (f"validate {run_id}: {rejected} of {lines_in} lines invalid "
                 f"({staged['quarantined']} at ingest, {len(invalid)} here; "
                 f"{invalid_fraction:.1%} > {config.max_invalid_fraction:.1%}); worst: "
                 f"{_blame(culprits)}. The valid records are stored; the rest are in "
                 f"{paths.quarantine} (reasons in {validation_html_path})")

    # 3. The store: ids held by other runs' parts are duplicates; the rest is this run's part.
    # The store is looked up for the ids at hand only (this batch's, its late events', the
    # events still pending), so a run costs its batch, not the history.
    valid = work[~failed]
    late = events.assign(
        timestamp=pd.to_datetime(events["timestamp"], utc=True, format="ISO8601"),
        origin="event", run_id=run_id).reindex(columns=list(FEEDBACK_HISTORY))
    before = _pending_before(feedback_dir, part)
    records_index = IdIndex(records_dir)
    known = records_index.found(
        pd.concat([valid["id"], late["id"], before["id"]]).dropna().unique(), part)
    seen = isin_ids(valid["id"], known)
    new = valid[~seen]
    new = new.assign(timestamp=new["_timestamp"], run_id=run_id)
    stored_ids = text_array(new["id"])
    _write_records_part(new, staged_path, records_dir / part)
    records_index.update(part)

    # 4. Feedback history: this run's events (late + inline, duplicates' included).
    own = pd.concat([frame for frame in (late, _inline_events(valid, run_id)) if len(frame)]
                    or [late], ignore_index=True)
    feedback_index = IdIndex(feedback_dir)
    _write_part(own, feedback_schema(), feedback_dir / part)
    feedback_index.update(part)
    all_ids = pa.concat_arrays([known, stored_ids])
    # Earlier events that matter here: those of this run's ids (an event delivered twice,
    # say by a re-sent feedback file, is one event) and of the records stored just now.
    earlier = feedback_index.rows(pa.concat_arrays([text_array(own["id"]), stored_ids]),
                                  part, feedback_schema())
    earlier = earlier[~_event_keys(earlier).duplicated()]
    keys = _event_keys(own)
    own = own[~keys.isin(set(_event_keys(earlier))) & ~keys.duplicated()]
    merged = int(isin_ids(own["id"], all_ids).sum() + isin_ids(earlier["id"], stored_ids).sum())
    # Pending: the events that were waiting, and this run's new ones, whose record is still
    # not stored.
    waiting = pd.concat([frame for frame in (before, own) if len(frame)] or [before],
                        ignore_index=True)
    waiting = waiting[~_event_keys(waiting).duplicated()]
    pending = waiting[~isin_ids(waiting["id"], all_ids)]
    write_table_atomic(_to_table(pending, feedback_schema()), feedback_dir / PENDING_NAME)

    result = ValidateResult(
        run_id=run_id, records_in=records_in, stored=len(new),
        duplicates=int(copies.sum() + seen.sum()), quarantined=len(invalid),
        invalid_fraction=invalid_fraction, feedback_merged=merged,
        feedback_pending=len(pending), expectations=summary,
        validation_path=str(validation_path), validation_html_path=str(validation_html_path),
        quarantine_path=str(quarantine_path) if len(invalid) else None,
        store_part=str(records_dir / part) if len(new) else None, alarm=alarm)
    assert result.records_in == result.stored + result.duplicates + result.quarantined, \
        "validate lost records"
    write_bytes_atomic(staging / STORED_MARKER,  # the commit point
                       json.dumps(result.model_dump(mode="json"), indent=1).encode())
    return result


def main(argv: list[str] | None = None) -> int:
    from tasks.core.settings import parse_config

    config = parse_config(ValidateConfig, argv, prog="flywheel validate",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        if config.run_id:
            results, leftovers = [validate(config)], 0
        else:
            run = validate_waiting(config)
            results, leftovers = run.batches, run.leftovers_removed
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if leftovers:
        print(f"removed {leftovers} temporary file(s) a killed validation had left")
    if not results:
        print("validate: no staged batch waits to be stored (run `flywheel ingest` to stage "
              "the landing folder's new files)")
    for result in results:
        _print_result(result)
    return 0


def _print_result(result: ValidateResult) -> None:
    print(f"validate {result.run_id}: {result.records_in} records in")
    print(f"  stored          {result.stored:>8}")
    print(f"  duplicates      {result.duplicates:>8}")
    print(f"  quarantined     {result.quarantined:>8}  ({result.invalid_fraction:.1%})"
          + (f"  -> {result.quarantine_path}" if result.quarantine_path else ""))
    print(f"  feedback merged {result.feedback_merged:>8}  ({result.feedback_pending} pending)")
    for name, item in result.expectations.items():
        if not item.success:
            print(f"  failed  {name:<24} {item.unexpected_count:>6} rows")
    print(f"  validation      {result.validation_path}")
    if result.alarm:
        print(f"alarm: {result.alarm}")


if __name__ == "__main__":
    sys.exit(main())
