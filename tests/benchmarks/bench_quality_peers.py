"""Peers on CLINC150 domain routing: how much curated data a simple router needs, and what the
teacher's own labels add (not a test).

Run it (one to four minutes on two CPU cores, most of it embedding ~15,000 queries once)::

    .venv/bin/python tests/benchmarks/bench_quality_peers.py [--train-sizes 100 300 700 1500]

The peer is frozen all-MiniLM-L6-v2 sentence embeddings (:mod:`tasks.core.embeddings`) and a
logistic regression (``class_weight="balanced"``) over the ten domains and ``out_of_scope``. Each
row trains it on one training set and scores it on CLINC150's whole test split: 4,500 in-scope
queries and 1,000 out-of-scope ones. Training sets:

* *curated*: ``n`` points of the train split, stratified over the eleven experts with seed 0
  (the sampler of ``quality_encoder_router.py``, so fine-tuned routers can be compared on the very
  same points); the train split holds only 100 out-of-scope queries, so larger sets have fewer
  than their share of them;
* *curated + teacher-labelled*: those points plus a seeded random sample of the rest of the train
  split labelled with the traffic simulator's teacher route
  (:func:`tasks.demo.simulate._teacher_routes`
  with the default ``SimulateConfig``: 96% accurate, errors mostly to a confusable expert), as
  ``CurateConfig(teacher_labels="train")`` would add unrated records.

Each training set is scored three times: the classifier's own answer; the same with the scope
guard a fine-tuned candidate is served with (:mod:`tasks.training.scope_guard`: built from the
training points alone); and with an out-of-scope threshold: a query whose highest class probability
is below ``t`` goes to ``out_of_scope``. ``t`` is chosen on CLINC150's validation split only (3,000
in-scope + 100 out-of-scope queries), as the one that maximises the mean of in-scope accuracy and
out-of-scope recall there (the mean, so the validation split's 3% out-of-scope share does not
decide); the test split never tunes anything.

Use it from another benchmark::

    from tests.benchmarks.bench_quality_peers import peer_rows, print_table
    rows = peer_rows(train_sizes=(700,), teacher_labelled=((700, 5000),))
    print_table(rows + my_rows)   # rows: dicts with the keys of COLUMNS
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT, Example, examples  # noqa: E402  # noqa: E402
from tasks.training.scope_guard import ScopeGuard  # noqa: E402
from tests.benchmarks.quality_encoder_router import stratified  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

#: Keys of a row, in the printed order.
COLUMNS = ("model", "train", "oos rule", "overall", "in-scope", "oos recall", "oos precision",
           "macro-F1")
#: The scope guard's in-scope budget (the catalog's default, tasks/training/catalog.py).
GUARD_BUDGET = 0.05
#: Candidate out-of-scope thresholds tried on the validation split.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))

_vectors: dict[str, np.ndarray] = {}


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit vectors of ``texts``, each text embedded once per process (cached in memory)."""
    import numpy as np

    from tasks.core.embeddings import embed_queries

    missing = list(dict.fromkeys(t for t in texts if t not in _vectors))
    if missing:
        _vectors.update(zip(missing, embed_queries(missing), strict=True))
    return np.stack([_vectors[t] for t in texts])


def split(name: str) -> list[Example]:
    """Every CLINC150 example of one split (in-scope and out-of-scope)."""
    return [e for e in examples() if e.split == name]


def curated_points(size: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(query, expert)``: ``size`` stratified points of the train split, gold-labelled."""
    return [(e.query, e.expert) for e in stratified(split("train"), size, seed)]


def teacher_labelled_points(n: int, exclude: Iterable[str], seed: int = 0
                            ) -> tuple[list[tuple[str, str]], float]:
    """``n`` train-split queries not in ``exclude``, labelled with the simulated teacher's route.

    Returns:
        The ``(query, teacher's expert)`` points and the share whose label is the gold one.
    """
    import numpy as np

    from tasks.demo.simulate import SimulateConfig, _teacher_routes

    everything = examples()
    gold = np.array([EXPERTS.index(e.expert) for e in everything])
    routes = _teacher_routes(SimulateConfig(seed=seed), gold)
    skip = set(exclude)
    pool = [i for i, e in enumerate(everything) if e.split == "train" and e.query not in skip]
    chosen = random.Random(seed).sample(pool, n)
    points = [(everything[i].query, EXPERTS[routes[i]]) for i in chosen]
    correct = float(np.mean([routes[i] == gold[i] for i in chosen]))
    return points, correct


def scores(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Overall and in-scope accuracy, out-of-scope recall and precision, macro-F1 (11 classes)."""
    import numpy as np
    from sklearn.metrics import f1_score

    g, p = np.asarray(gold), np.asarray(predicted)
    scope, oos, said_oos = g != FALLBACK_EXPERT, g == FALLBACK_EXPERT, p == FALLBACK_EXPERT
    return {
        "overall": float((g == p).mean()),
        "in-scope": float((g == p)[scope].mean()),
        "oos recall": float(said_oos[oos].mean()),
        "oos precision": float(oos[said_oos].mean()) if said_oos.any() else 0.0,
        "macro-F1": float(f1_score(g, p, labels=list(EXPERTS), average="macro",
                                   zero_division=0)),
    }


def with_threshold(proba: np.ndarray, classes: Sequence[str], threshold: float) -> list[str]:
    """The most probable class, or ``out_of_scope`` when its probability is below ``threshold``."""
    best = proba.argmax(axis=1)
    return [FALLBACK_EXPERT if proba[i, j] < threshold else classes[j]
            for i, j in enumerate(best)]


def calibrate(proba: np.ndarray, classes: Sequence[str], gold: Sequence[str],
              thresholds: Sequence[float] = THRESHOLDS) -> float:
    """The threshold maximising mean(in-scope accuracy, out-of-scope recall) on ``gold``
    (validation data); ties go to the lowest one."""
    def balanced(t: float) -> float:
        s = scores(gold, with_threshold(proba, classes, t))
        return (s["in-scope"] + s["oos recall"]) / 2

    return max(thresholds, key=lambda t: (balanced(t), -t))


def peer_row(name: str, points: Sequence[tuple[str, str]], c: float = 10.0
             ) -> list[dict[str, Any]]:
    """Train the peer on ``points`` and score it on the whole test split, without and with the
    validation-calibrated out-of-scope threshold: two rows keyed by :data:`COLUMNS`."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    classifier.fit(embed([q for q, _ in points]), [e for _, e in points])
    classes = list(classifier.classes_)
    val, test = split("val"), split("test")
    t = calibrate(classifier.predict_proba(embed([e.query for e in val])), classes,
                  [e.expert for e in val])
    proba = classifier.predict_proba(embed([e.query for e in test]))
    gold = [e.expert for e in test]
    base = {"model": "MiniLM (frozen) + logreg", "train": name}
    argmax = [classes[j] for j in proba.argmax(axis=1)]
    guard = ScopeGuard.build([q for q, _ in points], [e for _, e in points], GUARD_BUDGET,
                             fallback=FALLBACK_EXPERT)
    return [{**base, "oos rule": "argmax", **scores(gold, argmax)},
            {**base, "oos rule": f"p < {t:.2f} (val)", **scores(gold, with_threshold(
                proba, classes, t))},
            {**base, "oos rule": f"scope guard (train, {GUARD_BUDGET:.0%})", **scores(
                gold, guard.apply([e.query for e in test], argmax))}]


def peer_rows(train_sizes: Sequence[int] = (100, 300, 700, 1500),
              teacher_labelled: Sequence[tuple[int, int]] = ((700, 5000),),
              seed: int = 0) -> list[dict[str, Any]]:
    """Rows of the peer for each curated training size and each ``(curated, teacher-labelled)``
    pair (see the module docstring); embeddings are cached across rows."""
    rows: list[dict[str, Any]] = []
    for size in train_sizes:
        rows += peer_row(f"{size} curated", curated_points(size, seed))
    for size, extra in teacher_labelled:
        curated = curated_points(size, seed)
        noisy, correct = teacher_labelled_points(extra, [q for q, _ in curated], seed)
        rows += peer_row(f"{size} curated + {extra} teacher ({correct:.1%} right)",
                         curated + noisy)
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """The rows as one table, rates in percent and macro-F1 to three decimals."""
    from tabulate import tabulate

    def shown(key: str, value: Any) -> Any:
        if key == "macro-F1":
            return f"{value:.3f}"
        return f"{value:.1%}" if isinstance(value, float) else value

    print(tabulate([[shown(k, row[k]) for k in COLUMNS] for row in rows], headers=COLUMNS,
                   tablefmt="github", disable_numparse=True))


def training_points(label: str) -> int | None:
    """Training-set size of a row's ``train`` label ("700 curated + 5000 teacher ..." -> 5700)."""
    import re

    numbers = [int(n) for n in re.findall(r"(\d+) (?:curated|teacher)", label)]
    return sum(numbers) or None


def plot_curve(rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """Overall accuracy against training points, one line per model and out-of-scope rule."""
    from tasks.reporting.plots import _pyplot

    plt = _pyplot()
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        size = training_points(row["train"])
        if size and not row["oos rule"].startswith("p <"):  # val thresholds differ per row
            lines.setdefault(f"{row['model']}, {row['oos rule']}", []).append(
                (size, row["overall"]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in lines.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    ax.set_xscale("log")
    sizes = sorted({x for points in lines.values() for x, _ in points})
    ax.set_xticks(sizes, [f"{x:,}" for x in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training points (curated, + teacher-labelled at the right)")
    ax.set_ylabel("overall accuracy, % (CLINC150 test, 5,500)")
    ax.set_title("Router accuracy against training data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[100, 300, 700, 1500])
    parser.add_argument("--curated-for-teacher", type=int, default=700)
    parser.add_argument("--teacher-labelled", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None,
                        help="where the curve goes (default: a temporary folder)")
    args = parser.parse_args()
    started = time.perf_counter()
    test = split("test")
    n_oos = sum(e.expert == FALLBACK_EXPERT for e in test)
    print(f"CLINC150 test split: {len(test) - n_oos} in-scope + {n_oos} out-of-scope queries; "
          f"seed {args.seed}")
    rows = peer_rows(args.train_sizes,
                     ((args.curated_for_teacher, args.teacher_labelled),)
                     if args.teacher_labelled else (), args.seed)
    print_table(rows)
    out = Path(args.plot or Path(tempfile.mkdtemp(prefix="flywheel-peers-")) / "curve.png")
    print(f"curve: {plot_curve(rows, out)}")
    print(f"wall time {time.perf_counter() - started:.0f} s ({len(_vectors)} queries embedded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
