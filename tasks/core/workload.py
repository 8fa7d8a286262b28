"""A workload is a file: which agent's decisions the flywheel learns, over which experts.

One YAML file per workload, named ``<workload_id>.yaml``, in the folder ``$FLYWHEEL_WORKLOADS``
names (or the one a caller passes); the demo's own router ships in the package
(``tasks/workloads/router.yaml``) and is found when no user file has its id. A file is checked
whole when it is read, and every problem is reported with the file's path: an unknown field, a
duplicate or malformed expert name, an empty expert list, a fallback that is not one of the
experts, a ``workload_id`` that differs from the file's name.

The file is the label space: a record's route is checked against its experts at validation (a
route outside them is quarantined with the reason ``route_in_experts``). The choices a logged
request may list itself (``tools[].function.parameters.properties.<argument>.enum``) are not
read: agents log them inconsistently, and the route, not the offer, is what the flywheel learns.

    from tasks.core.workload import load_workload
    workload = load_workload("router")
    workload.expert_names          # ('banking', ..., 'out_of_scope')
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from tasks.core.errors import UserError, validation_problems
from tasks.core.params import GateThresholds, optional_field

#: The folder of the workload files that ship with the package (the demo's router).
SHIPPED = Path(__file__).resolve().parent.parent / "workloads"
#: Setting: the folder of a deployment's own workload files.
WORKLOADS_ENV = "FLYWHEEL_WORKLOADS"
#: A workload id or an expert name: what can be a file name, a metric name and a label.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _checked_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r} must match {NAME.pattern}")
    return value


#: A workload id or an expert name, checked against :data:`NAME`.
Name = Annotated[str, AfterValidator(_checked_name)]


class WorkloadError(UserError, ValueError):
    """A workload file that is missing or wrong; the message names the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expert(_Strict):
    """One expert agent the router can send a query to."""

    name: Name = Field(description="The label: what the router's decision names (letters, "
                                   "digits, '_', '.', '-'; at most 64).")
    description: str = Field(min_length=1, max_length=500, description=(
        "One line on what the expert handles; shown in prompts, to the judge and to reviewers."))


class Decision(_Strict):
    """Where a logged record holds the agent's decision."""

    kind: Literal["tool_call", "function_name", "content"] = Field("tool_call", description=(
        "'tool_call': an argument of a named tool call (a router's route_to(expert=...)); "
        "'function_name': the name of the function a tool-calling agent called is the label; "
        "'content': the assistant message's text is the label."))
    tool: str | None = Field("route_to", description="tool_call: the function's name.")
    argument: str | None = Field("expert", description="tool_call: the argument naming the expert.")

    @model_validator(mode="after")
    def _tool_call_names_its_argument(self) -> Decision:
        if self.kind == "tool_call" and not (self.tool and self.argument):
            raise ValueError("decision kind 'tool_call' needs 'tool' and 'argument'")
        return self


class GateDefaults(_Strict):
    """This workload's gate thresholds (none: the run's); each field's bounds and meaning are
    the gate's own (:class:`tasks.core.params.GateThresholds`, declared there alone)."""

    min_accuracy: float | None = optional_field(GateThresholds, "min_accuracy")
    max_p95_latency_ms: float | None = optional_field(GateThresholds, "max_p95_latency_ms")
    max_drop_vs_teacher: float | None = optional_field(GateThresholds, "max_drop_vs_teacher")
    min_speedup: float | None = optional_field(GateThresholds, "min_speedup")


class Workload(_Strict):
    """One agent's routing task: its experts and how its logs say what it decided."""

    workload_id: Name = Field(description="The id records carry in 'workload_id'; the file's name.")
    description: str = Field("", max_length=2000, description="What the agent does, for people.")
    experts: list[Expert] = Field(min_length=1, max_length=1000, description=(
        "The experts, in a fixed order (a classifier's label order)."))
    fallback_expert: str | None = Field(None, description=(
        "The expert a query no other expert fits goes to (one of 'experts'; none: every query "
        "has an expert)."))
    decision: Decision = Field(default_factory=Decision)
    teacher_models: list[str] = Field(default_factory=list, description=(
        "Logged model names of the production teacher (empty: every model not named "
        "flywheel-..., the flywheel's own routers)."))
    prompt: str = Field(
        "Route the user's question to the one expert who should answer it. Experts: {experts}. "
        "Answer with the expert's name only.", min_length=1, max_length=20_000, description=(
            "The system prompt of causal routers: {experts} becomes the names, comma-separated, "
            "{expert_list} one '- name: description' line per expert (one of them is needed)."))
    candidates: list[str] = Field(default_factory=list, description=(
        "Catalog candidates a cycle trains by default (empty: the DAG's default)."))
    gate: GateDefaults = Field(default_factory=GateDefaults)

    @model_validator(mode="after")
    def _experts(self) -> Workload:
        names = [e.name for e in self.experts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"duplicate expert names: {', '.join(repeated)}")
        if self.fallback_expert is not None and self.fallback_expert not in names:
            raise ValueError(f"fallback_expert {self.fallback_expert!r} is not one of the experts")
        if "{experts}" not in self.prompt and "{expert_list}" not in self.prompt:
            raise ValueError("prompt must contain {experts} or {expert_list}")
        return self

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    def system_prompt(self) -> str:
        return self.prompt.replace("{experts}", ", ".join(self.expert_names)).replace(
            "{expert_list}", "\n".join(f"- {e.name}: {e.description}" for e in self.experts))


def workloads_dir(folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The user's workload folder: ``folder``, else ``$FLYWHEEL_WORKLOADS``, else none."""
    chosen = folder or os.environ.get(WORKLOADS_ENV)
    return Path(chosen).expanduser() if chosen else None


def read_workload(path: Path) -> Workload:
    """One workload file, checked; :class:`WorkloadError` names the file and every problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkloadError(f"{path}: no such workload file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise WorkloadError(f"{path}: not YAML: {error}") from None
    if not isinstance(data, dict):
        raise WorkloadError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        workload = Workload.model_validate(data)
    except ValidationError as error:
        raise WorkloadError(f"{path}: {validation_problems(error, 'file')}") from None
    if workload.workload_id != path.stem:
        raise WorkloadError(f"{path}: workload_id {workload.workload_id!r} differs from the "
                            f"file's name {path.stem!r}")
    return workload


def load_workload(workload_id: str, folder: str | os.PathLike[str] | None = None) -> Workload:
    """The workload ``workload_id``: the user's file first, then the shipped one."""
    if not NAME.match(workload_id):
        raise WorkloadError(f"workload id {workload_id!r} must match {NAME.pattern}")
    searched = [d for d in (workloads_dir(folder), SHIPPED) if d is not None]
    for directory in searched:
        for suffix in (".yaml", ".yml"):
            path = directory / f"{workload_id}{suffix}"
            if path.is_file():
                return read_workload(path)
    raise WorkloadError(f"no workload file for {workload_id!r} in "
                        f"{' or '.join(str(d) for d in searched)} (one YAML file per workload, "
                        f"named <workload_id>.yaml; set {WORKLOADS_ENV} to your folder)")


def list_workloads(folder: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Every workload id found -> its file (the user's shadow shipped ones of the same id)."""
    found: dict[str, Path] = {}
    for directory in [d for d in (SHIPPED, workloads_dir(folder)) if d is not None]:
        if directory.is_dir():
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                found[path.stem] = path
    return found


class WorkloadSettings(BaseModel):
    """The workload fields a stage's settings share: whose records, and its label space.

    ``experts`` and ``fallback_expert`` come from the workload's file unless given (a caller
    that names them overrides the file, e.g. a test or a one-off run). A stage's settings inherit
    this class, so every stage reads the same file the same way; the file is read once, when the
    settings are made, and :meth:`workload` hands it out.
    """

    workload_id: Name = Field("router", description="Which agent's records (its workload file "
                                                    "<workload_id>.yaml)")
    workloads_dir: str | None = Field(None, description=(
        f"Folder of workload files (default ${WORKLOADS_ENV}; the shipped ones are found too)"))
    experts: list[str] | None = Field(None, min_length=1, max_length=1000, description=(
        "Labels allowed: the router's experts (default: the workload file's)"))
    fallback_expert: str | None = Field(None, description=(
        "The expert of queries no other expert handles (default: the workload file's)"))

    _file: Workload | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _from_workload_file(self) -> WorkloadSettings:
        if self.experts is None:
            workload = self._file = load_workload(self.workload_id, self.workloads_dir)
            self.experts = list(workload.expert_names)
            if self.fallback_expert is None:
                self.fallback_expert = workload.fallback_expert
        if len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts repeat a name: {self.experts}")
        if self.fallback_expert is not None and self.fallback_expert not in self.experts:
            raise ValueError(f"fallback_expert {self.fallback_expert!r} is not one of the "
                             f"experts {self.experts}")
        return self

    def workload(self) -> Workload | None:
        """The workload's file, read and checked; none when the caller named the experts and
        the workload has no file."""
        if self._file is not None:
            return self._file
        try:
            self._file = load_workload(self.workload_id, self.workloads_dir)
            return self._file
        except WorkloadError:
            if self.experts is None or list_workloads(self.workloads_dir).get(self.workload_id):
                raise
            return None


def manifest_experts(manifest: dict[str, Any]) -> tuple[list[str], str | None]:
    """The label space a curated dataset version was made over: (experts, fallback expert).

    Versions curated before datasets carried their workload's fallback expert name
    ``out_of_scope`` as the fallback when it is one of their experts.
    """
    experts = manifest.get("experts")
    if not experts:
        raise WorkloadError(f"dataset version {manifest.get('version', '?')} names no experts "
                            f"(its manifest.json has no 'experts')")
    fallback = manifest.get("fallback_expert",
                            "out_of_scope" if "out_of_scope" in experts else None)
    return list(experts), fallback


def teacher_models(explicit: str | None, workload: Workload | None) -> list[str]:
    """The logged model names that are the production teacher: ``explicit`` when given, else
    the workload file's ``teacher_models`` (empty: every model not named flywheel-...)."""
    if explicit:
        return [explicit]
    return list(workload.teacher_models) if workload else []


def describe_experts(experts: list[str], workload: Workload | None = None) -> str:
    """One ``- name: description`` line per expert (descriptions from the workload's file)."""
    known = {e.name: e.description for e in workload.experts} if workload else {}
    return "\n".join(f"- {name}: {known[name]}" if name in known else f"- {name}"
                     for name in experts)


def recorded_label_space(weights_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """What fine-tuning recorded beside a model's weights (``flywheel_training.json``: its
    ``labels``, ``fallback_expert``, ``system_prompt``, ...); empty when there is no record."""
    info = Path(weights_dir) / "flywheel_training.json" if weights_dir else None
    return json.loads(info.read_text()) if info is not None and info.is_file() else {}


def trained_label_space(weights_dir: str | None, experts: Sequence[str] | None = None
                        ) -> dict[str, Any]:
    """``{"labels", "fallback_expert", "system_prompt"}`` a model was trained with (recorded
    beside its weights in ``flywheel_training.json``); ``experts``, when given, name the labels
    instead (for a model with no such record, e.g. an untrained base model).

    Raises:
        ValueError: neither given nor recorded: a router that does not know its experts would
            route everything to one of somebody else's.
    """
    recorded = recorded_label_space(weights_dir)
    if experts:
        return {**recorded, "labels": list(experts)}
    if not recorded.get("labels"):
        raise ValueError(f"{weights_dir or 'the base model'} records no label space (no "
                         f"flywheel_training.json with 'labels'): name the experts")
    return recorded


#: The run settings a workload's file may give defaults for (besides its candidates).
GATE_SETTINGS = tuple(GateDefaults.model_fields)


def cycle_params(params: dict[str, Any], conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """A cycle's settings, each from the first that gives it: the run's own conf (what the
    trigger form or API sent), the workload's file (``candidates``, ``gate``), the DAG's
    default (already in ``params``).

    Args:
        params: the DAG run's params (defaults merged with the conf, as Airflow passes them).
        conf: the run's conf alone (``dag_run.conf``): what the user chose for this run.
    """
    conf = conf or {}
    workload = load_workload(params.get("workload_id") or "router", params.get("workloads_dir"))
    settings = dict(params)
    if "candidates" not in conf and workload.candidates:
        settings["candidates"] = list(workload.candidates)
    for name in GATE_SETTINGS:
        value = getattr(workload.gate, name)
        if name not in conf and value is not None:
            settings[name] = value
    return settings
