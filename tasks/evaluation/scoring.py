"""The one scale every router is scored on, whatever its family: the settings of an evaluation,
its result (accuracy, per-expert scores, the per-query right/wrong vector the gate pairs, latency
at batch 1, cost), and the scoring and logging both families share.

:mod:`tasks.evaluation.evaluate` scores causal language models through lm-eval,
:mod:`tasks.evaluation.encoder_router`
classifiers in one forward pass; both fill :class:`EvaluateResult` with these functions, so the
gate compares them on one scale.
"""

from __future__ import annotations

import platform
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.core.config import get_paths

#: Test queries each model is timed on, one at a time (the one default every stage uses).
LATENCY_QUERIES = 40


class EvaluateConfig(BaseModel):
    """Settings of one evaluation."""

    candidate: str = Field(min_length=1, description="Name shown in reports (candidate or base).")
    base_model_path: str = Field(description="Base model folder (or hub id).")
    adapter_dir: str | None = Field(None, description="PEFT adapter folder; none = base model.")
    dataset_dir: str = Field(description="Curated dataset version folder (test.jsonl inside).")
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    cycle_id: str = Field("manual", min_length=1, description="Cycle (DAG run) this belongs to.")
    mlflow_run_id: str | None = Field(None, description="Log into this run (e.g. the training's).")
    batch_size: int = Field(32, ge=1, le=4096, description="lm-eval batch size.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N test queries.")
    icl_examples: int = Field(0, ge=0, le=32, description=(
        "Solved train examples retrieved into each prompt (0: zero-shot or fine-tuned)."))
    general_text_docs: int = Field(0, ge=0, le=100_000, description=(
        "General-text documents scored for bits per byte, the forgetting check (0: off)."))
    general_text_file: str | None = Field(None, description=(
        "JSONL of {\"text\"} (or plain text, one document per line) for the forgetting check; "
        "default: a fixed sample of CLINC150's Wikipedia sentences, the offline bases' corpus."))
    latency_queries: int = Field(LATENCY_QUERIES, ge=1, le=100000,
                                 description="Queries timed one at a time.")
    latency_warmup: int = Field(5, ge=0, le=1000, description="Untimed queries before timing.")
    throughput_batch_size: int = Field(16, ge=1, le=4096, description=(
        "Batch size of the throughput figure (queries/s)."))
    price_per_device_hour: float = Field(1.0, ge=0, description=(
        "Price of one device-hour (any currency) for cost per 1,000 requests."))
    threads: int = Field(2, ge=1, le=256, description="CPU threads for inference.")
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")
    track: bool = Field(True, description="Log metrics to MLflow.")


class ExpertScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class EvaluateResult(BaseModel):
    candidate: str
    base_model_path: str
    adapter_dir: str | None
    dataset_version: str
    prompting: str = Field("zero-shot", description="fine-tuned, zero-shot or in-context (k=K)")
    n_test: int
    accuracy: float = Field(description="Exact match of the generated expert (as served).")
    macro_f1: float
    per_expert: dict[str, ExpertScores]
    confusion: dict[str, dict[str, int]]
    mc_accuracy: float | None = Field(None, description="Multiple choice by log-likelihood.")
    no_expert_rate: float | None = Field(None, description="Generations naming no expert.")
    general_bits_per_byte: float | None = Field(None, description=(
        "Bits per byte on the forgetting check's general text (lower is better; none: not run)."))
    general_text_docs: int | None = None
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    throughput_qps: float | None = None
    throughput_batch_size: int | None = None
    price_per_device_hour: float | None = None
    cost_per_1k_requests: float | None = None
    latency_hardware: str
    eval_seconds: float
    mlflow_run_id: str | None = None
    correct: str | None = Field(None, pattern=r"^[01]*$", description=(
        "Per test query, in the order of test.jsonl: 1 if the served prediction is right, else "
        "0; what the gate pairs with the champion's and the teacher's on the same queries."))
    scope_guard: dict | None = Field(None, description=(
        "The model's out-of-scope guard (tasks/training/scope_guard.py) when it has one; its "
        "time is inside the latency figures."))
    guard_fallbacks: int | None = Field(None, description=(
        "Test queries the guard sent to the fallback expert (none: no guard)."))
    note: str | None = Field(None, description="What this model is, where it is not obvious.")


def correctness(gold: list[str], predicted: list[str]) -> str:
    """The per-query right/wrong vector of :attr:`EvaluateResult.correct` (a compact string:
    about one byte per test query in XCom)."""
    return "".join("1" if g == p else "0" for g, p in zip(gold, predicted, strict=True))


def classification_report(gold: list[str], predicted: list[str], labels: list[str]
                          ) -> tuple[float, float, dict[str, ExpertScores], dict]:
    """Accuracy, macro-F1 (over experts present in gold), per-expert scores, confusion matrix.

    A prediction outside ``labels`` (a generation naming no expert) counts as wrong and shows in
    the confusion matrix under its own column.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    present = [label for label in labels if label in set(gold)]
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=present,
                                                 zero_division=0)
    per_expert = {label: ExpertScores(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]),
                                      support=int(s[i])) for i, label in enumerate(present)}
    columns = labels + sorted(set(predicted) - set(labels))
    matrix = confusion_matrix(gold, predicted, labels=columns)
    confusion = {g: {p_: int(matrix[i, j]) for j, p_ in enumerate(columns) if matrix[i, j]}
                 for i, g in enumerate(columns) if matrix[i].sum()}
    accuracy = sum(g == p_ for g, p_ in zip(gold, predicted, strict=True)) / max(1, len(gold))
    macro_f1 = float(sum(f) / len(f)) if len(f) else 0.0
    return accuracy, macro_f1, per_expert, confusion


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def cost_per_1k_requests(throughput_qps: float, price_per_device_hour: float) -> float:
    """What 1,000 requests cost on one device at the measured throughput."""
    return price_per_device_hour / 3600 / throughput_qps * 1000


def hardware(device: str = "cpu") -> str:
    """The device a model was evaluated and timed on, in words.

    Evaluation loads every model on the CPU (lm-eval with ``device="cpu"``, the serving
    :class:`tasks.serving.router.Router`, the encoder classifier), so that is the default: a GPU in
    the machine is named only when the model actually ran on it (``device="cuda:0"``).
    """
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device}:{torch.cuda.get_device_name(index)}"
    return f"cpu:{platform.machine()} x{torch.get_num_threads()} threads"


def log_evaluation(config: EvaluateConfig, result: EvaluateResult, work_dir: Path) -> str:
    from tasks.core import tracking

    tags = None if config.mlflow_run_id else {
        "flywheel.cycle_id": config.cycle_id, "flywheel.candidate": config.candidate,
        "flywheel.stage": "evaluate"}
    with tracking.run(config.workload_id, run_name=f"{config.cycle_id}/{config.candidate}",
                      run_id=config.mlflow_run_id, tags=tags,
                      paths=get_paths(config.home)) as active:
        import mlflow

        optional = {k: getattr(result, k) for k in (
            "mc_accuracy", "no_expert_rate", "throughput_qps", "cost_per_1k_requests",
            "general_bits_per_byte")}
        mlflow.log_metrics({
            "test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1,
            "latency_p50_ms": result.latency_p50_ms, "latency_p95_ms": result.latency_p95_ms,
            "ttft_p50_ms": result.ttft_p50_ms, "ttft_p95_ms": result.ttft_p95_ms,
            "n_test": result.n_test,
            **{f"test_{k}" if k == "mc_accuracy" else k: v for k, v in optional.items()
               if v is not None},
            **{f"f1.{expert}": s.f1 for expert, s in result.per_expert.items()}})
        mlflow.set_tags({"flywheel.latency_hardware": result.latency_hardware,
                         "flywheel.eval_dataset_version": result.dataset_version,
                         "flywheel.prompting": result.prompting,
                         "flywheel.price_per_device_hour": str(result.price_per_device_hour)})
        mlflow.log_dict(result.confusion, "evaluation/confusion.json")
        from tasks.curation.curate import log_dataset_input

        if (Path(config.dataset_dir) / "manifest.json").exists():  # a curated version
            log_dataset_input(config.dataset_dir, context="evaluation")
        mlflow.log_artifact(str(work_dir / "predictions.jsonl"), artifact_path="evaluation")
        return active.info.run_id
