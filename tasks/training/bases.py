"""Where a candidate's base model comes from.

A catalog's ``base_model`` is, in this order: a name a registered builder knows (the entry-point
group ``flywheel.base_models``: the demo registers its tiny test models, built offline on first
use), a packaged real model's name (:mod:`tasks.training.pretrained`, converted once), a local
model folder, or a hub id, returned unchanged for a deployment that can reach a hub.

A builder is ``builder(name, home) -> Path | None`` (None: not one of its names). Registering one
is how a package adds base models without the training code importing it:

    [project.entry-points."flywheel.base_models"]
    mine = "my_package.models:build"
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

#: The entry-point group of base-model builders.
GROUP = "flywheel.base_models"

Builder = Callable[[str, "str | os.PathLike[str] | None"], "Path | None"]


@cache
def builders() -> tuple[Builder, ...]:
    """The registered builders, loaded once per process."""
    from importlib.metadata import entry_points

    return tuple(ep.load() for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name))


def resolve_base_model(ref: str, home: str | os.PathLike[str] | None = None) -> Path | str:
    """Turn a model reference from a config into something ``from_pretrained`` accepts.

    Returns:
        The model folder for a builder's name, a packaged model's name or an existing folder;
        otherwise ``ref`` unchanged, as a hub id.
    """
    for build in builders():
        folder = build(ref, home)
        if folder is not None:
            return folder
    from tasks.training.pretrained import PACKAGED_MODELS, ensure_packaged_model

    if ref in PACKAGED_MODELS:
        return ensure_packaged_model(ref, home)
    local = Path(ref).expanduser()
    if local.is_dir():
        return local.resolve()
    return ref
