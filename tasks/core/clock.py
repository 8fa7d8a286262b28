"""The one clock: timezone-aware UTC, written as ISO 8601."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def now_iso(timespec: Precision = "microseconds", z: bool = False) -> str:
    """Now in UTC as ISO 8601, ``+00:00`` or (``z``) ``Z`` as its offset."""
    text = utc_now().isoformat(timespec=timespec)
    return text.replace("+00:00", "Z") if z else text


def stamp(fmt: str = "%Y%m%dT%H%M%S%fZ") -> str:
    """Now in UTC for a file or run name (sorts by time)."""
    return utc_now().strftime(fmt)


def run_window(days: float, interval_end: datetime | None, run_after: datetime | None
               ) -> tuple[datetime, datetime]:
    """A cycle's window of records, ``(end - days, end)``, fixed once per run.

    ``end`` is the run's data interval end (a scheduled run), else its ``run_after`` (a run
    triggered by hand, from the UI, the REST API or the CLI, has no data interval in Airflow 3,
    but always a ``run_after``), so every task of the run, and every retry of one, sees the same
    window; never the time a task happens to start. A review that waits hours for an expert does
    not move the curated window.

    Raises:
        ValueError: neither time is known (not an Airflow run: pass the window explicitly).
    """
    from datetime import timedelta

    end = interval_end or run_after
    if end is None:
        raise ValueError("the run has neither a data interval nor a run_after time")
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return end - timedelta(days=days), end
