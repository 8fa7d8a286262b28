"""A stage's settings, declared once, as the DAG's trigger form and its tasks read them.

Every setting is a field of one pydantic model (its default, its bounds and its description: the
settings of a stage, :class:`tasks.evaluation.gate.GateThresholds`, ...). The DAG's ``Param`` s are
generated from those fields (:func:`param_specs`: the JSON-schema keywords Airflow validates a
run's conf with and draws the form from), and a task builds its stage's config from the run's
params by the model's own field names (:func:`config_from`), so a default, a bound or a
description is written in one place and a form value reaches the stage unchanged.
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

from pydantic import BaseModel, Field, field_validator
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)

#: JSON-schema keywords a Param carries over from a field's schema.
_KEYWORDS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
             "maxLength", "minItems", "maxItems", "items", "enum", "pattern")


def _flatten(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` (pydantic's ``anyOf`` of X and null) as one schema whose type admits null,
    which Airflow's trigger form draws as the field it is, empty meaning none."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kinds, merged = [], {}
    for option in options:
        kind = option.get("type")
        kinds += kind if isinstance(kind, list) else [kind] if kind else []
        merged.update({k: v for k, v in option.items() if k != "type"})
    if "enum" in merged and "null" in kinds:
        merged["enum"] = [*merged["enum"], None]
    return {**{k: v for k, v in schema.items() if k != "anyOf"}, **merged,
            "type": list(dict.fromkeys(kinds)) if len(set(kinds)) > 1 else kinds[0]}


def param_specs(model: type[BaseModel],
                names: list[str] | tuple[str, ...] | dict[str, str] | None = None,
                defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{param: keyword arguments of airflow.sdk.Param}`` for the fields ``names`` (default:
    every field; a dict maps a param's name to its field's, where the form's name must say more
    than the stage's, e.g. ``judge_model`` for the judge's ``model``) of ``model``: ``default``
    (from ``defaults``, by param name, for a cycle that wants another than the stage's),
    ``description`` and the field's bounds and type as JSON schema.

    Raises:
        KeyError: a name is not a field of ``model``.
    """
    schema = model.model_json_schema(mode="serialization")
    properties, specs = schema["properties"], {}
    chosen = names if isinstance(names, dict) else {n: n for n in names or model.model_fields}
    for param, name in chosen.items():
        field = model.model_fields[name]
        prop = _flatten(properties[name])
        if "$ref" in prop:  # a nested model: a JSON object on the form
            prop = {"type": "object"}
        spec = {k: prop[k] for k in _KEYWORDS if k in prop}
        if isinstance(spec.get("items"), dict):  # typed items: the form shows a JSON field
            spec["items"] = _flatten(spec["items"])
        if "const" in prop:
            spec["enum"] = [prop["const"]]
        spec["default"] = (defaults or {}).get(param,
                                               field.get_default(call_default_factory=True))
        spec["description"] = field.description or ""
        specs[param] = spec
    return specs


def config_from(model: type[M], params: dict[str, Any], aliases: dict[str, str] | None = None,
                **values: Any) -> M:
    """``model`` built from the run's ``params`` (the fields it has; ``aliases`` maps a param's
    name to its field's, as for :func:`param_specs`) and ``values`` (what the task knows itself:
    the window, the run's id), validated. A null (a form's empty field) turns off a setting that
    may be none, and leaves any other at the stage's default."""
    names = {field: param for param, field in (aliases or {}).items()}
    chosen: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        param = names.get(name, name)
        if name in values or param not in params:
            continue
        value = params[param]
        if value is None and type(None) not in typing.get_args(field.annotation):
            continue
        chosen[name] = value
    return model.model_validate({**chosen, **values})


class CycleSettings(BaseModel):
    """The settings of a cycle run that no single stage owns (the stages' own are read from their
    configs: :func:`param_specs` of each)."""

    window_days: int = Field(7, ge=1, le=3650, description=(
        "Use records from the last N days before the run's time."))
    # the pretrained small routers of the catalog (an encoder classifier and a causal LM)
    candidates: list[str | dict[str, Any]] = Field(
        ["minilm-router-lora", "smollm2-router-lora"], min_length=1, description=(
            "Candidate names from the catalog (or whole entries). Left as it is, the workload "
            "file's candidates are trained where it names some."))
    max_train_steps: int | None = Field(None, ge=1, description=(
        "Cap optimizer steps (quick runs); empty = no cap."))
    auto_approve: bool = Field(False, description=(
        "flywheel_promotion promotes this cycle's challenger without asking a reviewer (demo, "
        "tests)."))


class GateThresholds(BaseModel):
    """What a candidate must reach to be registered (and then, after approval, served)."""

    min_accuracy: float = Field(0.70, ge=0, le=1, description="Minimum test accuracy.")
    max_p95_latency_ms: float = Field(1000.0, gt=0, description="Maximum p95 latency (ms).")
    max_accuracy_drop: float = Field(0.0, ge=0, le=1, description=(
        "How far below the champion (re-evaluated on the same test queries) a challenger's "
        "accuracy may be, by the point estimate, and still count as equal; it then passes only "
        "if cheaper. 0: no loss is ever accepted for a lower cost."))
    max_drop_vs_teacher: float | None = Field(0.03, ge=0, le=1, description=(
        "How far below the teacher's accuracy on the traffic audit (experts' labels on a random "
        "sample of its traffic) the candidate's test accuracy may fall, paired on the "
        "traffic-audit test queries where enough; none: not checked."))
    min_saving: float = Field(0.1, ge=0, lt=1, description=(
        "How much cheaper (cost per 1,000 requests, else p95) a challenger of equal accuracy "
        "must be than the champion to replace it, as a share: a p95 measured twice on a shared "
        "machine differs by a few percent, and noise must not swap the champion."))
    min_speedup: float | None = Field(None, gt=0, description=(
        "Minimum teacher p95 / candidate p95 (teacher from its logs); none: not checked."))
    max_forgetting: float | None = Field(None, ge=0, description=(
        "Maximum increase of bits per byte on general text over the candidate's base model "
        "(the forgetting check); none: not checked."))
    tie_margin: float = Field(0.01, ge=0, le=1, description=(
        "Accuracies this close to the best count as equal; the cheapest of them wins."))
    alpha: float = Field(0.05, gt=0, le=0.5, description=(
        "Significance level of the paired tests (McNemar exact); intervals are at 1 - alpha."))
    min_paired_queries: int = Field(100, ge=1, description=(
        "Paired test queries below which a challenger cannot be shown better than the champion "
        "(the verdict says: not enough evidence)."))
    min_teacher_evidence: int = Field(30, ge=1, description=(
        "Traffic-audit records the teacher must be graded on for max_drop_vs_teacher (fewer: "
        "that check fails, not enough evidence), and traffic-audit test queries needed to pair "
        "(fewer: compared unpaired)."))

    @field_validator("max_drop_vs_teacher", "min_speedup", "max_forgetting", mode="before")
    @classmethod
    def _none_turns_off(cls, value: Any) -> Any:
        """``none`` (or an empty value) on the command line or in YAML turns a check off."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value


def optional_field(model: type[BaseModel], name: str) -> Any:
    """``model``'s field ``name`` with its bounds and description but a default of None, for a
    layer that may leave it to the next (a workload file's gate defaults: none = the run's)."""
    return FieldInfo.merge_field_infos(model.model_fields[name], default=None)
