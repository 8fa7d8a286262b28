"""Any model that makes the workload's decision, evaluated on the frozen test split.

Whatever the family (:mod:`tasks.families`), a :class:`tasks.families.Decider` decides the test
queries as it is served (``route_batch``, its scope guard included), is scored on the scale every
router is (:mod:`tasks.evaluation.scoring`: accuracy, macro-F1, per-expert scores, the confusion
matrix and the per-query right/wrong vector the gate pairs), and is timed by the one latency
protocol (:func:`tasks.evaluation.latency.measure`: batch-1 p50/p95 with tokenisation and the
guard inside the clock, a batched throughput and the cost per 1,000 requests). The causal LMs
are evaluated through lm-eval instead (:mod:`tasks.evaluation.evaluate`: generation and multiple
choice), timed by the same protocol.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tasks.core.config import get_paths
from tasks.core.workload import manifest_experts
from tasks.evaluation.latency import measure
from tasks.evaluation.scoring import (
    EvaluateConfig,
    EvaluateResult,
    classification_report,
    correctness,
    hardware,
    log_evaluation,
)


def read_test_split(config: EvaluateConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(manifest, test documents)`` of ``config.dataset_dir`` (the first ``config.limit``)."""
    dataset_dir = Path(config.dataset_dir)
    test_path = dataset_dir / "test.jsonl"
    if not test_path.is_file():
        raise FileNotFoundError(f"dataset folder {dataset_dir} has no test.jsonl")
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    docs = [json.loads(line) for line in test_path.read_text().splitlines() if line.strip()]
    if config.limit:
        docs = docs[: config.limit]
    if not docs:
        raise ValueError(f"{test_path} has no test queries")
    return manifest, docs


def evaluate_decider(config: EvaluateConfig, decider: Any, prompting: str = "fine-tuned",
                     note: str | None = None) -> EvaluateResult:
    """Accuracy, latency and cost of ``decider`` on the test split of ``config.dataset_dir``.

    Writes ``predictions.jsonl`` and ``evaluate_result.json`` under ``runs/<cycle>/eval/<name>/``
    and, with ``config.track``, logs the figures to MLflow.
    """
    paths = get_paths(config.home)
    manifest, docs = read_test_split(config)
    work_dir = paths.runs / config.cycle_id / "eval" / config.candidate.replace(
        ":", "_").replace("/", "_")
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    queries = [d["query"] for d in docs]
    about = decider.describe()
    guard = decider.guard
    predicted = decider.route_batch(queries)
    gold = [d["expert"] for d in docs]
    experts = list(dict.fromkeys([*manifest_experts(manifest)[0], *about.get("labels", [])]))
    accuracy, macro_f1, per_expert, confusion = classification_report(gold, predicted, experts)
    latency = measure(decider, queries[: config.latency_queries], config.latency_warmup,
                      config.throughput_batch_size, config.price_per_device_hour)
    result = EvaluateResult(
        candidate=config.candidate, base_model_path=config.base_model_path,
        adapter_dir=config.adapter_dir, dataset_version=manifest["version"], n_test=len(gold),
        prompting=prompting, accuracy=accuracy, macro_f1=macro_f1, per_expert=per_expert,
        confusion=confusion, latency_hardware=hardware(str(about.get("device", "cpu"))),
        eval_seconds=time.perf_counter() - started, note=note,
        correct=correctness(gold, predicted),
        scope_guard=guard.describe() if guard is not None else None,
        guard_fallbacks=sum(guard.out_of_scope(queries)) if guard is not None else None,
        **latency)
    (work_dir / "predictions.jsonl").write_text("".join(
        json.dumps({"id": d.get("id"), "query": d["query"], "gold": g, "predicted": p}) + "\n"
        for d, g, p in zip(docs, gold, predicted, strict=True)))
    if config.track:
        result.mlflow_run_id = log_evaluation(config, result, work_dir)
    (work_dir / "evaluate_result.json").write_text(result.model_dump_json(indent=1))
    return result
