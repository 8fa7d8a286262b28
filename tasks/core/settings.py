"""Typed stage configs from defaults, then a YAML file, then the command line (as TRL's TrlParser).

Each stage declares one pydantic model whose field descriptions are its documentation;
:func:`parse_config` turns it into an ``argparse`` parser so ``flywheel <stage> --help`` shows them.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tasks.core.errors import validation_problems

M = TypeVar("M", bound=BaseModel)


def _is_scalar(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict, set):
        return False
    if origin is not None:  # Optional[X] / X | None
        return all(_is_scalar(a) for a in typing.get_args(annotation) if a is not type(None))
    return not (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def build_parser(model: type[BaseModel], prog: str, description: str | None = None
                 ) -> argparse.ArgumentParser:
    """An argument parser with one ``--flag`` per field of ``model`` (lists/dicts take JSON)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = "" if _is_scalar(field.annotation) else " (JSON)"
        default = field.default if field.default is not None else "none"
        # a yes/no setting reads as a switch too: ``--approve`` alone means ``--approve true``
        switch: dict[str, Any] = ({"nargs": "?", "const": "true"}
                                  if field.annotation is bool else {})
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, **switch,
                            help=f"{field.description or ''}{kind} [default: {default}]")
    return parser


def parse_config(model: type[M], argv: list[str] | None, prog: str,
                 description: str | None = None) -> M:
    """Defaults, then ``--config`` YAML, then flags; a bad value exits with a clear message."""
    parser = build_parser(model, prog, description)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    if (config_file := args.pop("config", None)) is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            parser.error(f"{config_file}: cannot read settings: {exc}")
        if not isinstance(loaded, dict):
            parser.error(f"{config_file}: expected a mapping of settings")
        unknown = sorted(str(key) for key in loaded if key not in model.model_fields)
        if unknown:  # a misspelt setting would otherwise be ignored without a word
            known = ", ".join(model.model_fields)
            parser.error(f"{config_file}: unknown setting(s) {', '.join(map(repr, unknown))} "
                         f"(known: {known})")
        values.update(loaded)
    for name, raw in args.items():
        annotation = model.model_fields[name].annotation
        if not _is_scalar(annotation):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                parser.error(f"--{name.replace('_', '-')}: not valid JSON ({exc.msg})")
        values[name] = raw
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        parser.error(validation_problems(exc, "settings"))
        raise  # unreachable: parser.error exits
