"""Errors people read: what was wrong, and where."""

from __future__ import annotations

from pydantic import ValidationError


class UserError(Exception):
    """A mistake in what a person gave a command (a setting, a file, a name), as opposed to a
    fault of the code: the ``flywheel`` command line prints its message as one line and exits 1,
    without a traceback (``--debug`` shows it)."""


def validation_problems(error: ValidationError, whole: str = "value") -> str:
    """A pydantic error as one line: ``field.path: message`` per problem, ``whole`` for the
    value itself (a file, an answer)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}"
                     for e in error.errors())
