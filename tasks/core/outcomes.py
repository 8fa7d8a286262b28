"""What a stage decided after the cycle's report was written, each in its own file, written once.

The cycle's ``report`` task writes ``runs/<cycle>/report.json`` and nothing else ever rewrites
it. What happens to the cycle's winner later is each deciding stage's own file beside it:
``registered.json`` (``flywheel register`` registering a winner the cycle did not) and
``promoted.json`` (the promotion DAG, or a reviewer's approval). The report reads them when it is
rendered (:func:`tasks.reporting.report.load_report`): a stage never edits another's record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.core.config import get_paths
from tasks.core.files import write_json_atomic

Stage = Literal["registered", "promoted"]


class Registered(BaseModel):
    """A winner registered as the challenger (or why nothing was)."""

    model_config = ConfigDict(extra="allow")

    registered: bool
    candidate: str | None = None
    version: str | None = Field(None, description="Its version in the model registry")
    reason: str | None = None


class Promoted(BaseModel):
    """The alias champion moved to a challenger (or why it was not)."""

    model_config = ConfigDict(extra="allow")

    promoted: bool
    version: str | None = None
    reason: str | None = None


MODELS: dict[str, type[BaseModel]] = {"registered": Registered, "promoted": Promoted}


def outcome_path(cycle_id: str, stage: Stage, home: str | None = None) -> Path:
    return get_paths(home).runs / cycle_id / f"{stage}.json"


def write_outcome(cycle_id: str, stage: Stage, outcome: dict[str, Any],
                  home: str | None = None) -> Path:
    """Check ``outcome`` against its stage's model and write it whole (a rename)."""
    checked = MODELS[stage].model_validate(outcome)
    path = outcome_path(cycle_id, stage, home)
    write_json_atomic(path, checked.model_dump(mode="json"), indent=1, default=str)
    return path


def read_outcome(cycle_id: str, stage: Stage, home: str | None = None) -> dict[str, Any] | None:
    """The stage's outcome for the cycle, checked; None when it has none."""
    path = outcome_path(cycle_id, stage, home)
    if not path.is_file():
        return None
    return MODELS[stage].model_validate_json(path.read_text()).model_dump(mode="json")
