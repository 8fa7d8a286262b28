"""Settings declared once: the cycle DAG's trigger form is generated from the stages' models, and
a form value reaches the stage unchanged (tasks.core.params)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from tasks.core.params import config_from, param_specs


class Stage(BaseModel):
    window: int = Field(7, ge=1, le=30, description="Days.")
    floor: float | None = Field(0.03, ge=0, le=1, description="A check; none: off.")
    backend: Literal["a", "b"] = Field("a", description="Which one.")
    model: str | None = Field(None, description="Its model.")


def test_a_param_carries_the_fields_default_bounds_and_description():
    specs = param_specs(Stage, {"window": "window", "floor": "floor", "stage_backend": "backend"},
                        defaults={"window": 3})
    assert specs["window"] == {"type": "integer", "minimum": 1, "maximum": 30, "default": 3,
                               "description": "Days."}
    assert specs["floor"]["type"] == ["number", "null"] and specs["floor"]["default"] == 0.03
    assert specs["stage_backend"]["enum"] == ["a", "b"]
    with pytest.raises(KeyError):
        param_specs(Stage, ["windoww"])


def test_a_form_value_reaches_the_stage_and_an_empty_field_means_what_the_field_says():
    params = {"window": 5, "floor": None, "stage_backend": "b", "model": None, "other": 1}
    config = config_from(Stage, params, {"stage_backend": "backend"})
    assert (config.window, config.floor, config.backend) == (5, None, "b")  # null: off
    assert config_from(Stage, {"window": None}).window == 7  # not optional: the default
    assert config_from(Stage, params, window=9).window == 9  # what the task knows wins
    with pytest.raises(ValidationError):
        config_from(Stage, {"window": 99})


def test_the_cycle_dag_params_are_the_models_fields():
    """Every gate threshold, curation, review, judge and evaluation setting of the cycle's form
    has its model's default (or the cycle's stated one), bounds and description."""
    from airflow.dag_processing.dagbag import DagBag

    from tasks.curation.curate import CurateConfig
    from tasks.evaluation.gate import GateThresholds

    dags = Path(__file__).resolve().parents[2] / "dags"
    dag = DagBag(dag_folder=str(dags / "flywheel_cycle.py")).dags["flywheel_cycle"]
    params = dag.params
    for name, field in GateThresholds.model_fields.items():
        param = params.get_param(name)
        assert param.value == field.default and param.description == field.description, name
    curate = CurateConfig.model_fields["near_duplicate_threshold"]
    param = params.get_param("near_duplicate_threshold")
    assert param.value == curate.default and param.schema["exclusiveMinimum"] == 0
    assert params.get_param("min_judge_agreement").value == \
        CurateConfig.model_fields["min_judge_agreement"].default
    assert params.get_param("sme_review").schema["enum"] == ["simulated", "ui", "skip"]
    # and a conf value reaches the stage's config by the same names
    config = config_from(CurateConfig, {**params.dump(), "near_duplicate_threshold": 0.9})
    assert config.near_duplicate_threshold == 0.9 and config.teacher_labels == "off"


def test_a_workload_files_gate_defaults_are_the_gates_own_fields():
    """Declared once: the workload file's gate defaults carry the gate's bounds and meaning."""
    from tasks.core.params import GateThresholds
    from tasks.core.workload import GateDefaults

    for name, field in GateDefaults.model_fields.items():
        gate = GateThresholds.model_fields[name]
        assert field.default is None
        assert (field.description, field.metadata) == (gate.description, gate.metadata), name
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        GateDefaults(min_accuracy=2)
