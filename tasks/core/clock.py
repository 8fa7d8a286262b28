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
