from __future__ import annotations

import json

import pytest
import yaml

from tasks.evaluate import (
    EvaluateConfig,
    _percentile,
    classification_report,
    evaluate,
    write_task_config,
)
from tasks.prompts import format_prompt, format_target, parse_expert
from tests.test_finetune import write_dataset


def test_classification_report_counts_per_expert():
    gold = ["banking", "banking", "travel", "travel", "meta"]
    pred = ["banking", "travel", "travel", "travel", "banking"]
    labels = ["banking", "travel", "meta", "home"]
    accuracy, macro_f1, per_expert, confusion = classification_report(gold, pred, labels)
    assert accuracy == pytest.approx(3 / 5)
    assert per_expert["banking"].precision == pytest.approx(0.5)
    assert per_expert["travel"].recall == pytest.approx(1.0)
    assert per_expert["meta"].f1 == 0.0
    assert "home" not in per_expert  # absent from gold: not averaged into macro-F1
    assert macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert confusion["banking"] == {"banking": 1, "travel": 1}
    assert confusion["meta"] == {"banking": 1}


def test_percentile_interpolates():
    assert _percentile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert _percentile([10.0] * 7, 0.95) == 10.0
    assert _percentile(list(range(101)), 0.95) == pytest.approx(95)


def test_prompt_round_trip():
    assert format_prompt("  where is   my card ") .endswith("Query: where is my card\nExpert:")
    assert format_target("banking") == " banking"
    assert parse_expert(" banking</s>", ("banking",)) is None
    assert parse_expert(" banking\nmore", ("banking",)) == "banking"
    assert parse_expert("", ("banking",)) is None


def test_run_task_yaml_points_at_this_test_split(tmp_path):
    dataset = write_dataset(tmp_path / "d", n_train=4, n_test=3)
    folder = write_task_config(dataset, tmp_path / "task")
    config = yaml.safe_load((folder / "flywheel_routing.yaml").read_text())
    assert config["include"].endswith("evaluation/flywheel_routing/flywheel_routing.yaml")
    assert config["dataset_kwargs"]["data_files"]["test"] == str(dataset / "test.jsonl")


@pytest.mark.slow
def test_lm_eval_scores_the_base_model(tmp_path, xs_base_model):
    dataset = write_dataset(tmp_path / "d", n_train=4, n_test=22)
    result = evaluate(EvaluateConfig(candidate="base:xs", base_model_path=str(xs_base_model),
                                     dataset_dir=str(dataset), home=str(tmp_path),
                                     latency_queries=3, latency_warmup=1))
    assert result.n_test == 22
    assert 0.0 <= result.accuracy <= 1.0
    assert sum(sum(row.values()) for row in result.confusion.values()) == 22
    assert 0 < result.ttft_p50_ms <= result.latency_p50_ms <= result.latency_p95_ms
    predictions = (tmp_path / "runs" / "manual" / "eval" / "base_xs" / "predictions.jsonl")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 22 and {"gold", "predicted"} <= set(rows[0])
