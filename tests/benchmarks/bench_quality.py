"""Router quality on CLINC150 domain routing: real fine-tuned candidates beside their peers, in
one run (not a test).

Run it (tens of minutes on two CPU cores; ``make bench-quality``)::

    .venv/bin/python tests/benchmarks/bench_quality.py \
        [--candidates minilm-router-lora minilm-linear-probe smollm2-router-lora smollm2-lora] \
        [--teacher-labelled 5000]

Every model is trained on the same 700 points of CLINC150's train split, stratified over the ten
domains and ``out_of_scope`` with seed 0 (``quality_encoder_router.stratified``), and scored on
CLINC150's **whole** test split: 4,500 in-scope queries and 1,000 out-of-scope ones. Rows:

* each catalog candidate fine-tuned through the cycle's own code
(:func:`tasks.training.finetune.finetune`:
  the training worker under ``torchrun``, one CPU rank), with train time, batch-1 p50/p95 latency
  and the size of its weights; classifiers also with an out-of-scope threshold (a query whose top
  probability is below ``t`` goes to ``out_of_scope``) chosen on the validation split only, and
  with the scope guard the cycle builds from the training points alone and serves with the
  model (:mod:`tasks.training.scope_guard`; its time is in that row's latency);
* with ``--teacher-labelled N``: the ``--teacher-candidates`` again on the 700 points plus ``N``
  train-split queries labelled by the traffic simulator's teacher (96% right), as
  ``teacher_labels="train"`` curates them (``--teacher-epochs`` passes);
* each causal base zero-shot and with 4 retrieved in-context examples, through lm-eval, on a
  stratified ``--base-test-size`` sample of the test split (the row says so): a base model that
  cannot name an expert is not worth minutes of CPU per thousand queries;
* the peer, frozen MiniLM embeddings + logistic regression, at 100 / 300 / 700 / 1,500 curated
  points and 700 + 5,000 teacher-labelled (:mod:`bench_quality_peers`): the data curve.

Nothing is tuned on the test split. The figures are from this machine's two shared CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT  # noqa: E402
from tasks.training.scope_guard import ScopeGuard  # noqa: E402
from tests.benchmarks.bench_quality_peers import (  # noqa: E402
    calibrate,
    curated_points,
    peer_rows,
    plot_curve,
    scores,
    split,
    teacher_labelled_points,
    with_threshold,
)
from tests.benchmarks.quality_encoder_router import stratified  # noqa: E402

COLUMNS = ("model", "train", "oos rule", "test n", "overall", "in-scope", "oos recall",
           "oos precision", "macro-F1", "train s", "p50 ms", "p95 ms", "weights MB")


def write_dataset(folder: Path, train: list[tuple[str, str]], test: list[tuple[str, str]]
                  ) -> Path:
    """A curated-version folder the cycle's stages read: train/test JSONL and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{i}", "query": q, "expert": e}) + "\n"
            for i, (q, e) in enumerate(rows)))
    (folder / "manifest.json").write_text(json.dumps(
        {"version": folder.name, "digest": "-", "workload_id": "router",
         "experts": list(EXPERTS), "fallback_expert": FALLBACK_EXPERT}))
    return folder


def size_mb(folder: str | None) -> float | None:
    if not folder or not Path(folder).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def train_candidate(name: str, dataset: Path, home: Path, threads: int,
                    epochs: float | None = None) -> tuple[Any, float]:
    from tasks.training.catalog import load_catalog
    from tasks.training.finetune import FinetuneConfig, finetune

    spec = load_catalog()[name]
    spec.hyperparameters.checkpoint_every = 0
    if epochs:
        spec.hyperparameters.epochs = epochs
    started = time.perf_counter()
    trained = finetune(FinetuneConfig(candidate=name, spec=spec, dataset_dir=str(dataset),
                                      home=str(home), cycle_id=dataset.name, track=False,
                                      threads=threads))
    return trained, time.perf_counter() - started


def classifier_rows(name: str, label: str, trained: Any, train_s: float, threads: int
                    ) -> list[dict[str, Any]]:
    """A fine-tuned classifier (an encoder or a linear probe) on the whole test split: argmax,
    and the val-calibrated out-of-scope threshold; timed as served, by the one latency protocol
    (tasks.evaluation.latency.measure), without and with its scope guard."""
    import torch

    from tasks.families import open_decider

    torch.set_num_threads(threads)
    full = trained.method == "full"
    router = open_decider(trained.family, trained.adapter_dir if full else
                          trained.base_model_path, None if full else trained.adapter_dir,
                          threads=threads)
    labels = router.describe()["labels"]

    def proba(queries: list[str]):
        if trained.family == "linear_probe":
            return router.probabilities(queries)
        model, tokenizer = router.model, router.tokenizer
        out = []
        with torch.inference_mode():
            for i in range(0, len(queries), 128):
                inputs = tokenizer(queries[i:i + 128], padding=True, truncation=True,
                                   max_length=64, return_tensors="pt")
                out.append(torch.softmax(model(**inputs).logits, -1))
        return torch.cat(out).numpy()

    val, test = split("val"), split("test")
    t = calibrate(proba([e.query for e in val]), labels, [e.expert for e in val])
    p = proba([e.query for e in test])
    gold, queries = [e.expert for e in test], [e.query for e in test]
    argmax = [labels[j] for j in p.argmax(1)]
    common = {"model": name, "train": label, "test n": len(test), "train s": train_s,
              "weights MB": size_mb(trained.adapter_dir)}

    def timed(guard: ScopeGuard | None = None) -> dict[str, float]:
        from tasks.evaluation.latency import measure

        saved, router.guard = router.guard, guard
        try:
            latency = measure(router, queries[:100], warmup=10, batch_size=16)
        finally:
            router.guard = saved
        return {"p50 ms": latency["latency_p50_ms"], "p95 ms": latency["latency_p95_ms"]}

    plain = timed()
    rows = [{**common, **plain, "oos rule": "argmax", **scores(gold, argmax)},
            {**common, **plain, "oos rule": f"p < {t:.2f} (val)",
             **scores(gold, with_threshold(p, labels, t))}]
    guard = ScopeGuard.load(trained.adapter_dir)
    if guard is not None:
        rows.append({**common, **timed(guard), "oos rule": guard_rule(guard),
                     **scores(gold, guard.apply(queries, argmax))})
    return rows


def guard_rule(guard: ScopeGuard) -> str:
    return f"scope guard (train, {guard.budget:.0%})"


def causal_row(name: str, label: str, trained: Any, train_s: float, threads: int
               ) -> dict[str, Any]:
    """A fine-tuned causal router on the whole test split, decoded as it is served."""
    from tasks.core.prompts import parse_expert
    from tasks.evaluation.evaluate import measure_latency
    from tasks.serving.router import Router

    full = trained.method == "full"
    router = Router(trained.adapter_dir if full else trained.base_model_path,
                    None if full else trained.adapter_dir, threads=threads)
    test = split("test")
    prompts = [router.prompt_text(e.query) for e in test]
    predicted: list[str] = []
    for i in range(0, len(prompts), 32):
        predicted += [parse_expert(text, EXPERTS) or FALLBACK_EXPERT
                      for text in router.generate_batch(prompts[i:i + 32])]
    rule = "no expert named -> fallback"
    if router.guard is not None:  # served with its guard (its time is in the latency below)
        predicted = router.guard.apply([e.query for e in test], predicted)
        rule = guard_rule(router.guard) + " + " + rule
    latency = measure_latency(trained.base_model_path, None if full else trained.adapter_dir,
                              [e.query for e in test[:40]], 5, threads, batch_size=16)
    return {"model": name, "train": label, "oos rule": rule,
            "test n": len(test), **scores([e.expert for e in test], predicted),
            "train s": train_s, "p50 ms": latency["latency_p50_ms"],
            "p95 ms": latency["latency_p95_ms"], "weights MB": size_mb(trained.adapter_dir)}


def base_rows(name: str, dataset: Path, home: Path, base_path: str, threads: int
              ) -> list[dict[str, Any]]:
    """A causal base zero-shot and in-context through lm-eval (generation, exact match)."""
    from tasks.evaluation.evaluate import EvaluateConfig, evaluate

    rows = []
    for k in (0, 4):
        result = evaluate(EvaluateConfig(
            candidate=f"base:{name}" + (f":icl{k}" if k else ""), base_model_path=base_path,
            dataset_dir=str(dataset), cycle_id="bench-base", home=str(home), track=False,
            icl_examples=k, general_text_docs=0, latency_queries=20, threads=threads))
        predictions = [json.loads(line) for line in (
            home / "runs" / "bench-base" / "eval" / result.candidate.replace(":", "_")
            / "predictions.jsonl").read_text().splitlines()]
        rows.append({"model": f"{name} base", "train": "zero-shot" if not k else
                     f"{k} retrieved examples in the prompt", "oos rule": "exact match",
                     "test n": result.n_test, **scores([p["gold"] for p in predictions],
                                                        [p["predicted"] for p in predictions]),
                     "train s": None, "p50 ms": result.latency_p50_ms,
                     "p95 ms": result.latency_p95_ms, "weights MB": None})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from tabulate import tabulate

    def shown(key: str, value: Any) -> Any:
        if value is None:
            return "-"
        if key == "macro-F1":
            return f"{value:.3f}"
        if key in ("train s", "p50 ms", "p95 ms", "weights MB"):
            return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
        return f"{value:.1%}" if isinstance(value, float) else value

    print(tabulate([[shown(k, row.get(k)) for k in COLUMNS] for row in rows], headers=COLUMNS,
                   tablefmt="github", disable_numparse=True), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="*",
                        default=["minilm-router-lora", "minilm-linear-probe",
                                 "smollm2-router-lora", "smollm2-lora"])
    parser.add_argument("--train-size", type=int, default=700)
    parser.add_argument("--teacher-labelled", type=int, default=0,
                        help="also train the --teacher-candidates on 700 + N teacher-labelled "
                             "points")
    parser.add_argument("--teacher-candidates", nargs="*",
                        default=["minilm-router-lora", "minilm-linear-probe"])
    parser.add_argument("--teacher-epochs", type=float, default=2.0,
                        help="passes over the larger teacher-labelled set (the catalog's epochs "
                             "are sized for ~700 points)")
    parser.add_argument("--base-test-size", type=int, default=550,
                        help="test queries (stratified) for the causal bases' zero-shot and "
                             "in-context rows; 0 skips them")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--plot", default=None,
                        help="where the accuracy-against-training-points chart goes "
                             "(default: the work folder)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from tasks.training.catalog import load_catalog

    catalog = load_catalog()
    started = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-quality-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    test = [(e.query, e.expert) for e in split("test")]
    curated = curated_points(args.train_size)
    datasets = [("curated", f"{args.train_size} curated",
                 write_dataset(home / "data-curated", curated, test))]
    if args.teacher_labelled:
        noisy, right = teacher_labelled_points(args.teacher_labelled, [q for q, _ in curated])
        datasets.append(("teacher", f"{args.train_size} curated + {args.teacher_labelled} "
                         f"teacher ({right:.1%} right)",
                         write_dataset(home / "data-teacher", curated + noisy, test)))
    print(f"CLINC150 test split: {sum(e != FALLBACK_EXPERT for _, e in test)} in-scope + "
          f"{sum(e == FALLBACK_EXPERT for _, e in test)} out-of-scope; train "
          f"{args.train_size} stratified points, seed 0; work folder {home}", flush=True)

    rows: list[dict[str, Any]] = []
    for name in args.candidates:
        spec = catalog[name]
        for key, label, dataset in datasets:
            if key == "teacher" and name not in args.teacher_candidates:
                continue
            epochs = args.teacher_epochs if key == "teacher" else None
            print(f"\n== {name} on {label}" + (f", {epochs:g} epochs" if epochs else ""),
                  flush=True)
            trained, seconds = train_candidate(name, dataset, home, args.threads, epochs)
            print(f"   trained {trained.steps} steps in {seconds:.0f} s", flush=True)
            if spec.family == "causal_lm":
                rows.append(causal_row(name, label, trained, seconds, args.threads))
                print_table(rows[-1:])
            else:  # a classifier: an encoder or a linear probe
                added = classifier_rows(name, label, trained, seconds, args.threads)
                rows += added
                print_table(added)
        if spec.family == "causal_lm" and args.base_test_size:
            sample = stratified(split("test"), args.base_test_size, 0)
            small = write_dataset(home / f"data-base-{name}", curated,
                                  [(e.query, e.expert) for e in sample])
            rows += base_rows(spec.base_model, small, home, trained.base_model_path,
                              args.threads)
            print_table(rows[-2:])
    if not args.no_peers:
        print("\n== peers: frozen MiniLM + logistic regression", flush=True)
        for row in peer_rows():
            rows.append({**row, "test n": len(test)})
    print("\n" + "=" * 100)
    print_table(rows)
    print(f"\ncurve: {plot_curve(rows, Path(args.plot or home / 'quality_curve.png'))}")
    best = max((r for r in rows if r["model"] in catalog), key=lambda r: r["overall"],
               default=None)
    peer = next((r for r in rows if r["model"].startswith("MiniLM (frozen)")
                 and r["train"] == f"{args.train_size} curated" and r["oos rule"] == "argmax"),
                None)
    if best and peer:
        print(f"\nbest fine-tuned: {best['model']} ({best['train']}, {best['oos rule']}) "
              f"{best['overall']:.1%} overall = {best['overall'] / peer['overall']:.2f}x the "
              f"peer's {peer['overall']:.1%} on the same {args.train_size} points")
    latencies = [r["p95 ms"] for r in rows if r.get("p95 ms")]
    if latencies:
        print(f"median p95 over the rows: {statistics.median(latencies):.0f} ms (batch 1, "
              "this machine's CPU)")
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
