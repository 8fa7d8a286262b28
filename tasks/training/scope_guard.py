"""The scope guard: a query unlike anything the router was trained on goes to the fallback expert.

A router trained on a few hundred curated queries knows its experts well and the rest of the
world not at all. Asked something outside every expert's domain, a classifier still picks the
class it leans to, and its top probability is a poor warning (on CLINC150 the frozen MiniLM
router's probability separates out-of-scope queries from in-scope ones with an AUROC of 0.81,
its nearest training neighbour's similarity with 0.96; ``tests/benchmarks/bench_quality.py``).
So a router carries a guard beside its weights:

* the sentence embeddings (:mod:`tasks.core.embeddings`, the vectors the Qdrant collections hold) of
  its in-scope training queries, and
* a similarity threshold: a query whose mean similarity to its ``neighbours`` nearest training
  queries is below it is routed to the fallback expert, whatever the model says.

The threshold needs no out-of-scope examples and never sees the test split: it is the
``budget`` quantile of the same score for each in-scope training query against the *other*
training queries (leave-one-out), i.e. the share of in-scope traffic the guard is expected to send
to the fallback by mistake. The default, 5%, is the usual operating point of out-of-distribution
detectors (95% of in-distribution inputs kept).

Why 5 neighbours and not the nearest one: on CLINC150's validation split (3,000 in-scope + 100
out-of-scope queries; the test split was not looked at), the mean over the 5 nearest separated
out-of-scope queries with an AUROC of 0.955 / 0.977 (guards built from 700 curated / 700 + 5,000
teacher-labelled train points), the nearest alone 0.954 / 0.972, and at the 5% budget it kept
closer to its budget on the larger set (6.0% of in-scope queries turned away, against 7.6%).

    guard = ScopeGuard.build(train_queries, train_experts, budget=0.05, fallback="other")
    guard.save(adapter_dir)                       # travels with the weights into the registry
    ScopeGuard.load(adapter_dir).apply(queries, predicted)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: File beside a model's weights holding its guard.
GUARD_FILE = "scope_guard.npz"
#: Fewer in-scope training queries than this give no guard: the quantile would be noise.
MIN_REFERENCE = 20
#: Nearest training queries whose mean similarity is a query's score (see the module's docstring).
NEIGHBOURS = 5


@dataclass
class ScopeGuard:
    """Reference vectors (unit rows) and the score below which a query is out of scope; the
    score is the mean cosine similarity to the ``neighbours`` nearest reference vectors."""

    vectors: np.ndarray
    threshold: float
    budget: float
    fallback: str
    neighbours: int = 1

    def __post_init__(self) -> None:
        import numpy as np
        import torch

        # stored as float16 (half the file); compared in float32, converted once, not per query,
        # and by torch: numpy's BLAS threads between two torch forward passes fight torch's own
        # for the cores (measured: 24 ms p50 / 110 ms p95 a query against 10.5 / 11 with torch)
        self._reference = torch.from_numpy(np.ascontiguousarray(self.vectors, dtype=np.float32))
        if not 1 <= self.neighbours <= len(self.vectors):
            raise ValueError(f"scope guard neighbours must be in [1, {len(self.vectors)}], got "
                             f"{self.neighbours}")

    @classmethod
    def build(cls, queries: Sequence[str], experts: Sequence[str], budget: float = 0.05, *,
              fallback: str, neighbours: int = NEIGHBOURS) -> ScopeGuard:
        """The guard of a training set: its in-scope queries and the leave-one-out threshold.

        Raises:
            ValueError: ``budget`` outside (0, 0.5), lengths differ, or fewer than
                :data:`MIN_REFERENCE` distinct in-scope queries.
        """
        import numpy as np

        from tasks.core.embeddings import embed_queries

        if not 0 < budget < 0.5:
            raise ValueError(f"scope guard budget must be in (0, 0.5), got {budget}")
        if len(queries) != len(experts):
            raise ValueError(f"{len(queries)} queries but {len(experts)} experts")
        reference = list(dict.fromkeys(
            q.strip() for q, e in zip(queries, experts, strict=True) if e != fallback and
            q.strip()))
        if len(reference) < MIN_REFERENCE:
            raise ValueError(f"a scope guard needs at least {MIN_REFERENCE} distinct in-scope "
                             f"training queries, got {len(reference)}")
        if neighbours < 1:
            raise ValueError(f"scope guard neighbours must be at least 1, got {neighbours}")
        vectors = embed_queries(reference)
        k = min(neighbours, len(vectors) - 1)  # leave-one-out leaves n - 1 to compare with
        score = np.empty(len(vectors), dtype=np.float32)
        for start in range(0, len(vectors), 1024):  # blocks keep the n x n product small
            block = vectors[start:start + 1024] @ vectors.T
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -1.0
            score[start:start + len(block)] = np.partition(block, -k, axis=1)[:, -k:].mean(1)
        threshold = float(np.quantile(score, budget))
        return cls(vectors=vectors.astype(np.float16), threshold=threshold, budget=budget,
                   fallback=fallback, neighbours=k)

    def similarity(self, queries: Sequence[str]) -> np.ndarray:
        """Each query's score: its mean cosine similarity to its ``neighbours`` nearest
        reference queries."""
        import numpy as np
        import torch

        from tasks.core.embeddings import embed_queries

        if not queries:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            similar = torch.from_numpy(embed_queries(list(queries))) @ self._reference.T
            score = similar.topk(self.neighbours, dim=1).values.mean(1)
        return score.numpy()

    def out_of_scope(self, queries: Sequence[str]) -> list[bool]:
        """Whether the guard sends each query to the fallback expert."""
        return [bool(s < self.threshold) for s in self.similarity(queries)]

    def apply(self, queries: Sequence[str], predicted: Sequence[str]) -> list[str]:
        """``predicted`` with every out-of-scope query's expert replaced by the fallback."""
        if len(queries) != len(predicted):
            raise ValueError(f"{len(queries)} queries but {len(predicted)} predictions")
        return [self.fallback if out else p
                for out, p in zip(self.out_of_scope(queries), predicted, strict=True)]

    def describe(self) -> dict[str, Any]:
        """What the guard is, for results, MLflow params and the report."""
        return {"reference_queries": int(len(self.vectors)), "threshold": round(self.threshold, 4),
                "budget": self.budget, "neighbours": self.neighbours, "fallback": self.fallback}

    def save(self, folder: str | Path) -> Path:
        import numpy as np

        path = Path(folder) / GUARD_FILE
        np.savez_compressed(path, vectors=self.vectors, meta=np.array(json.dumps(
            {"threshold": self.threshold, "budget": self.budget, "fallback": self.fallback,
             "neighbours": self.neighbours})))
        return path

    @classmethod
    def load(cls, folder: str | Path | None) -> ScopeGuard | None:
        """The guard saved in ``folder``, or None when the model has none.

        Raises:
            ValueError: the file is there but unreadable (a model must not silently lose it).
        """
        import numpy as np

        if not folder or not (Path(folder) / GUARD_FILE).is_file():
            return None
        path = Path(folder) / GUARD_FILE
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                vectors = data["vectors"]
            # a guard saved before the score averaged several neighbours used the nearest one
            return cls(vectors=vectors, threshold=float(meta["threshold"]),
                       budget=float(meta["budget"]), fallback=meta["fallback"],
                       neighbours=int(meta.get("neighbours", 1)))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"scope guard {path} is unreadable: {exc}") from exc


def build_for_training_set(train_path: str | Path, budget: float, out: str | Path,
                           fallback: str | None) -> dict[str, Any] | None:
    """Build and save the guard of a ``train.jsonl`` into ``out``; its description, or None
    (printed why) when the budget is 0, the workload has no fallback expert to send
    out-of-scope queries to, or the set is too small for one."""
    if budget <= 0:
        return None
    if fallback is None:
        print("no scope guard: the workload has no fallback expert", flush=True)
        return None
    rows = [json.loads(line) for line in Path(train_path).read_text().splitlines()
            if line.strip()]
    try:
        guard = ScopeGuard.build([r["query"] for r in rows], [r["expert"] for r in rows], budget,
                                 fallback=fallback)
    except ValueError as exc:
        print(f"no scope guard: {exc}", flush=True)
        return None
    guard.save(out)
    info = guard.describe()
    print(f"scope guard: {info['reference_queries']} in-scope training queries, threshold "
          f"{info['threshold']:.3f} on the mean similarity to the {info['neighbours']} nearest "
          f"(leave-one-out, {budget:.0%} budget)", flush=True)
    return info
