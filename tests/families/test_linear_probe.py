"""The linear-probe family (frozen MiniLM embeddings + logistic regression): a candidate a user can
pick, trained by the finetune stage, evaluated, gated, registered and served like the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_finetune import write_dataset


def test_the_catalog_offers_it_and_checks_its_method():
    from tasks.training.catalog import CatalogError, load_catalog, parse_candidate

    spec = load_catalog()["minilm-linear-probe"]
    assert (spec.family, spec.method) == ("linear_probe", "linear_probe")
    with pytest.raises(CatalogError, match="not available for family 'linear_probe'"):
        parse_candidate({"name": "x", "base_model": "all-MiniLM-L6-v2",
                         "family": "linear_probe", "method": "lora"})


def test_a_probe_needs_its_weights_and_matching_labels(tmp_path):
    from tasks.evaluation.encoder_router import resolve_encoder
    from tasks.families.linear_probe import PROBE_FILE, LinearProbeRouter

    encoder = str(resolve_encoder("all-MiniLM-L6-v2"))
    with pytest.raises(ValueError, match="fitted weights"):
        LinearProbeRouter(encoder, None)
    np.savez(tmp_path / PROBE_FILE, coef=np.zeros((3, 384), np.float32),
             intercept=np.zeros(3, np.float32))
    (tmp_path / "flywheel_training.json").write_text(json.dumps({"labels": ["a", "b"]}))
    with pytest.raises(ValueError, match="3 probe rows for 2 labels"):
        LinearProbeRouter(encoder, str(tmp_path))


@pytest.mark.slow
def test_a_linear_probe_trains_evaluates_gates_registers_and_serves(tmp_path):
    from tasks.evaluation.evaluate import evaluate_candidate
    from tasks.evaluation.gate import GateThresholds, decide, scores_of
    from tasks.families import Decider, open_decider
    from tasks.registry.register import register_winner
    from tasks.serving.router import load_champion
    from tasks.training.catalog import load_catalog
    from tasks.training.finetune import FinetuneConfig, finetune

    dataset = write_dataset(tmp_path / "dataset", n_train=400, n_test=60)
    spec = load_catalog()["minilm-linear-probe"]
    trained = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                      home=str(tmp_path), cycle_id="probe"))
    assert (trained.family, trained.method) == ("linear_probe", "linear_probe")
    assert trained.final_loss < 0.5 * trained.first_loss, (trained.first_loss,
                                                          trained.final_loss)
    assert trained.trainable_parameters == 11 * (384 + 1)  # one row and bias per label
    assert trained.scope_guard  # the guard every candidate gets from its training set

    evaluation = evaluate_candidate(trained.model_dump(mode="json"), str(dataset), "router",
                                    "probe", latency_queries=10, home=str(tmp_path))
    tuned = evaluation["finetuned"]
    assert evaluation["family"] == "linear_probe" and evaluation["base"] is None
    assert evaluation["forgetting_applies"] is False
    assert tuned["n_test"] == 60 and len(tuned["correct"]) == 60
    assert tuned["accuracy"] > 0.5, tuned["accuracy"]  # chance is 1/11
    # the one latency protocol: batch-1 p50/p95, throughput and cost, like every family
    assert 0 < tuned["latency_p50_ms"] <= tuned["latency_p95_ms"]
    assert tuned["throughput_qps"] > 0 and tuned["cost_per_1k_requests"] > 0
    assert tuned["scope_guard"] == trained.scope_guard

    decision = decide(scores_of([evaluation]), GateThresholds(
        min_accuracy=0.5, max_drop_vs_teacher=None, max_forgetting=0.1))
    assert decision.winner == spec.name, decision.verdicts[0].reasons
    assert any("n/a for a linear_probe router" in r for r in decision.verdicts[0].reasons)
    registered = register_winner(decision.model_dump(mode="json"), [evaluation], "probe-desk",
                                 "probe", home=str(tmp_path))
    assert registered["registered"]

    queries = [json.loads(line)["query"] for line in
               (dataset / "test.jsonl").read_text().splitlines()][:12]
    served = load_champion("probe-desk", alias="challenger", home=str(tmp_path))
    assert served.model_config["family"] == "linear_probe"
    direct = open_decider("linear_probe", trained.base_model_path, trained.adapter_dir)
    assert isinstance(direct, Decider)
    assert served.predict(queries) == direct.route_batch(queries)
    assert direct.describe()["family"] == "linear_probe"
    assert Path(trained.adapter_dir, "probe.npz").is_file()
