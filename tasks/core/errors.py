"""Errors people read: what was wrong, and where."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(error: ValidationError, whole: str = "value") -> str:
    """A pydantic error as one line: ``field.path: message`` per problem, ``whole`` for the
    value itself (a file, an answer)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}"
                     for e in error.errors())
