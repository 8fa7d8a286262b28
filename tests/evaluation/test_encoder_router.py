"""The encoder router family: MiniLM + LoRA trains through the DeepSpeed worker, and the cycle's
evaluate step scores it on the same test split with the causal LMs' result shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.demo.clinc150 import FALLBACK_EXPERT
from tasks.training.scope_guard import ScopeGuard
from tests.training.test_finetune import write_dataset


def test_shipped_encoder_resolves_offline():
    from tasks.evaluation.encoder_router import resolve_encoder

    folder = Path(resolve_encoder("all-MiniLM-L6-v2"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert resolve_encoder("some-org/some-model") == "some-org/some-model"  # a hub id, as given


def test_class_weights_follow_the_label_order_and_are_checked():
    from tasks.training.catalog import CandidateSpec, CatalogError, parse_candidate
    from tasks.training.worker import class_weight_tensor

    labels = ["hr", "it", "out_of_scope"]
    assert class_weight_tensor(None, labels) is None
    assert class_weight_tensor({"out_of_scope": 2.5}, labels).tolist() == [1.0, 1.0, 2.5]
    with pytest.raises(ValueError, match=r"does not have: \['oos'\]"):
        class_weight_tensor({"oos": 2.0}, labels)
    with pytest.raises(ValueError, match="encoder family only"):
        CandidateSpec(name="x", base_model="m", hyperparameters={"class_weights": {"hr": 2.0}})
    with pytest.raises(CatalogError, match="class_weights"):
        parse_candidate({"name": "x", "base_model": "m", "family": "encoder",
                         "hyperparameters": {"class_weights": {"hr": 0}}})


@pytest.mark.slow
def test_encoder_router_trains_and_evaluates_like_a_causal_router(tmp_path):
    from safetensors.torch import load_file

    from tasks.core import tracking
    from tasks.evaluation.encoder_router import BASE_NOTE
    from tasks.evaluation.evaluate import EvaluateResult, evaluate_candidate
    from tasks.training.catalog import load_catalog
    from tasks.training.finetune import FinetuneConfig, finetune

    dataset = write_dataset(tmp_path / "dataset", n_train=160, n_test=40)
    spec = load_catalog()["minilm-router-lora"].model_copy(deep=True)
    spec.hyperparameters.max_steps = 20
    spec.hyperparameters.learning_rate = 3e-3
    spec.hyperparameters.checkpoint_every = 10
    trained = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                      home=str(tmp_path), cycle_id="enc"))
    assert trained.family == "encoder" and trained.steps == 20
    assert trained.final_loss < 0.8 * trained.first_loss, (trained.first_loss, trained.final_loss)
    weights = load_file(Path(trained.adapter_dir) / "adapter_model.safetensors")
    assert any("lora_B" in k and float(w.abs().max()) > 0 for k, w in weights.items())
    assert any("classifier" in k for k in weights), "the trained head is not in the adapter"

    evaluation = evaluate_candidate(trained.model_dump(mode="json"), str(dataset), "router",
                                    "enc", latency_queries=5, home=str(tmp_path))
    tuned, base = evaluation["finetuned"], evaluation["base"]
    assert set(EvaluateResult.model_fields) <= set(tuned) and set(EvaluateResult.model_fields) \
        <= set(base)
    assert tuned["n_test"] == base["n_test"] == 40
    assert sum(tuned["confusion"][g][p] for g in tuned["confusion"]
               for p in tuned["confusion"][g]) == 40
    assert base["note"] == BASE_NOTE
    assert (tuned["prompting"], base["prompting"]) == ("fine-tuned", "untrained head (chance)")
    # 20 steps on 160 queries: well above chance (1/11), and above the untrained head
    assert tuned["accuracy"] > 0.3 and tuned["accuracy"] > base["accuracy"], (tuned, base)
    assert 0 < tuned["latency_p50_ms"] <= tuned["latency_p95_ms"]
    assert tuned["ttft_p50_ms"] == tuned["latency_p50_ms"]  # one forward pass answers
    # the scope guard finetune saved beside the weights is what evaluation applied
    assert trained.scope_guard and tuned["scope_guard"] == trained.scope_guard
    assert base["scope_guard"] is None and base["guard_fallbacks"] is None
    guard = ScopeGuard.load(trained.adapter_dir)
    flagged = guard.out_of_scope([json.loads(line)["query"] for line in
                                  (dataset / "test.jsonl").read_text().splitlines()])
    assert tuned["guard_fallbacks"] <= sum(flagged)  # (some the model sent there itself)
    predictions = [json.loads(line) for line in (tmp_path / "runs" / "enc" / "eval" / spec.name
                                                 / "predictions.jsonl").read_text().splitlines()]
    assert all(p["predicted"] == FALLBACK_EXPERT for p, f in zip(predictions, flagged,
                                                                 strict=True) if f)

    mlflow = tracking.configure(tracking.get_paths(str(tmp_path)))
    run = mlflow.MlflowClient().get_run(trained.mlflow_run_id)
    assert run.data.params["family"] == "encoder"
    assert run.data.metrics["test_accuracy"] == pytest.approx(tuned["accuracy"])
    history = mlflow.MlflowClient().get_metric_history(trained.mlflow_run_id, "train_loss")
    assert len(history) == 20
    info = json.loads((Path(trained.adapter_dir) / "flywheel_training.json").read_text())
    assert info["family"] == "encoder" and len(info["labels"]) == 11
