"""The store: validated records and their feedback, as Parquet parts, and how stages read it.

``<home>/store/records/part-<run>.parquet`` holds each validated record once (the batch that
stored it and its line beside it); ``<home>/store/feedback/part-<run>.parquet`` every feedback
event. :func:`load_store` reads them back as one frame, a record's latest rating merged in: the
read API of every stage after validation (:mod:`tasks.ingest.validate` writes the parts).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.config import get_paths
from tasks.core.records import FLAT_COLUMNS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

#: Extra columns of the store's record table: the batch that stored a record and its line.
STORE_EXTRA = ("line", "run_id")
#: Columns of the store's feedback history.
FEEDBACK_HISTORY = ("id", "timestamp", "rating", "source", "comment", "origin", "source_file",
                    "line", "run_id")


def record_schema() -> pa.Schema:
    import pyarrow as pa

    types = {"timestamp": pa.timestamp("us", tz="UTC"), "latency_ms": pa.float64(),
             "ttft_ms": pa.float64(), "rating": pa.float64(), "line": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in (*FLAT_COLUMNS, *STORE_EXTRA)])


def feedback_schema() -> pa.Schema:
    import pyarrow as pa

    types = {"timestamp": pa.timestamp("us", tz="UTC"), "rating": pa.float64(),
             "line": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in FEEDBACK_HISTORY])


def read_parts(folder: Path, schema: pa.Schema, exclude: str | None = None,
                columns: list[str] | None = None, filters: list[tuple] | None = None
                ) -> pd.DataFrame:
    """The part files of one store table (all but ``exclude``) as one frame; ``filters``
    (pyarrow's ``[(column, op, value), ...]``, all must hold) are applied while reading, so row
    groups outside them are skipped by their statistics, not loaded and dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(p for p in folder.glob("part-*.parquet") if p.name != exclude)
    tables = [pq.read_table(p, columns=columns, filters=filters or None) for p in parts]
    if not tables:
        tables = [schema.empty_table().select(columns or schema.names)]
    return pa.concat_tables(tables).to_pandas()


def text_array(values: Any) -> pa.Array:
    """Ids (a pandas Series or Index, a list, a pyarrow array) as one pyarrow string array."""
    import pyarrow as pa

    if not isinstance(values, pa.Array | pa.ChunkedArray):
        values = pa.array(list(values) if isinstance(values, set) else values,
                          type=pa.string(), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):  # what pandas' arrow-backed text hands over
        values = values.combine_chunks()
    return values.cast(pa.string())


def isin_ids(values: Any, value_set: Any) -> Any:
    """``values.isin(value_set)`` for ids, as a numpy bool array, by pyarrow's hash lookup:
    pandas' own ``isin`` on text builds a Python scalar per member of the set, seconds once the
    set holds a store's ids. Missing values match nothing."""
    import pyarrow.compute as pc

    return pc.is_in(text_array(values), value_set=text_array(value_set),
                    skip_nulls=True).to_numpy(zero_copy_only=False)


def as_utc(value: datetime | str | None) -> Any:
    import pandas as pd

    if value is None:
        return None
    moment = pd.Timestamp(value)
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def latest_feedback(events: pd.DataFrame) -> pd.DataFrame:
    """The latest event per id (by timestamp; ties go to the event recorded later)."""
    events = events.drop_duplicates(subset=["id", "timestamp", "rating", "source", "comment"])
    events = events.sort_values("timestamp", kind="mergesort")
    return events.drop_duplicates(subset="id", keep="last").set_index("id")


def load_store(home: str | os.PathLike[str] | None = None, workload_id: str | None = None,
               start: datetime | str | None = None, end: datetime | str | None = None
               ) -> pd.DataFrame:
    """Stored records with their latest feedback merged in.

    Args:
        home: flywheel home (default ``$FLYWHEEL_HOME``).
        workload_id: keep only this workload.
        start: keep records at or after this time (naive means UTC).
        end: keep records before this time.

    Returns:
        One row per record: ``FLAT_COLUMNS`` (``timestamp`` as UTC datetimes; ``rating`` the
        latest rating as nullable Int64, with its ``feedback_source`` and ``feedback_comment``),
        ``feedback_at`` (when that rating was given), ``line`` and ``run_id``; sorted by time.
    """
    import pandas as pd

    paths = get_paths(home)
    filters = [("workload_id", "==", workload_id)] if workload_id is not None else []
    filters += [("timestamp", ">=", as_utc(start).to_pydatetime())] if start is not None else []
    filters += [("timestamp", "<", as_utc(end).to_pydatetime())] if end is not None else []
    records = read_parts(paths.store / "records", record_schema(), filters=filters)
    records = records.drop_duplicates(subset="id", keep="first")
    events = read_parts(paths.store / "feedback", feedback_schema())
    latest = latest_feedback(events[isin_ids(events["id"], records["id"])])
    records = records.set_index("id", drop=False)
    has_event = isin_ids(records.index, latest.index)
    matched = latest.reindex(records.index)
    inline = records["rating"].notna() & ~has_event  # normally every inline rating is an event
    records["rating"] = matched["rating"].where(has_event, records["rating"]).astype("Int64")
    records["feedback_source"] = matched["source"].where(has_event, records["feedback_source"])
    records["feedback_comment"] = matched["comment"].where(has_event,
                                                           records["feedback_comment"])
    records["feedback_at"] = matched["timestamp"].where(
        has_event, records["timestamp"].where(inline, pd.NaT))
    records = records.reset_index(drop=True).sort_values(["timestamp", "id"], kind="mergesort")
    return records.reset_index(drop=True)
