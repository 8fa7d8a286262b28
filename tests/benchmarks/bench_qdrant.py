"""The embedded vector index: qdrant-client's local mode against Qdrant Edge, side by side.

Run it::

    .venv/bin/python tests/benchmarks/bench_qdrant.py --points 20000 --queries 500

Both engines index the same random unit vectors (384-d, so the numbers measure Qdrant, not the
encoder, which embeds ~400 short sentences/s on two cores) with payloads shaped like the flywheel's
(a label on 3/4 of the points, 2/3 of them in train), in the same run and through the same
:class:`tasks.curation.vectors.QueryIndex` methods: :class:`~tasks.curation.vectors.ServerIndex` on
a local-mode client (``QdrantClient(path=...)``, the embedded index of earlier versions) and
:class:`~tasks.curation.vectors.EdgeIndex` (the embedded default). Printed per engine, with the
ratio:

* upsert rate, in chunks of 256 (local mode: one SQLite commit per point; Edge: a write-ahead log);
* close (Edge flushes its segments here), reopen from disk, and a rerun of indexing that finds
  every point present;
* top-10 search, one query at a time and as a batch, unfiltered and filtered to labelled train
  points, inside the engine and through the matrix path (:meth:`QueryIndex.search` with
  ``engine=False``); "default" is what :meth:`QueryIndex.search` does on that engine;
* whether the neighbours equal exact (numpy) search, id for id and in order.

Local mode's in-engine search is slow (a Python loop over every point), so it is timed on
``--sample`` queries and reported per query.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _size_mb(folder: Path) -> float:
    """Bytes in use (files are preallocated sparse, so not their apparent size)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    import numpy as np
    from qdrant_client import QdrantClient

    from tasks.curation.vectors import EdgeIndex, QueryIndex, ServerIndex, collection_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--sample", type=int, default=20,
                        help="queries timed one at a time (and local mode's in-engine batch)")
    args = parser.parse_args()

    n, workload = args.points, "bench"
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"r{i}" for i in range(n)]
    labels = ["banking", "travel", "home", None]
    payloads = [{"record_id": rid, "query": f"random query number {i}", "route": labels[i % 3],
                 "rating": 1, "timestamp": "2026-11-20T09:00:00+00:00",
                 "label": labels[i % 4], "label_source": "feedback" if i % 4 != 3 else None,
                 "split": "train" if i % 3 else "test"} for i, rid in enumerate(ids)]
    queries = vectors[rng.choice(n, size=min(args.queries, n), replace=False)]
    sample = queries[:max(1, min(args.sample, len(queries)))]

    # exact neighbours, for checking both engines
    admitted = np.array([p["label"] is not None and p["split"] == "train" for p in payloads])
    scores = queries @ vectors.T
    truth_all = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    scores[:, ~admitted] = -np.inf
    truth_filtered = np.argsort(-scores, axis=1, kind="stable")[:, :10]

    def agree(hits: list[list[Any]], truth: np.ndarray) -> int:
        return sum([h.record_id for h in found] == [ids[j] for j in want]
                   for found, want in zip(hits, truth, strict=False))

    def measure(open_: Any, folder: Path) -> dict[str, Any]:
        r: dict[str, Any] = {}
        index: QueryIndex = open_()
        _, r["upsert"] = _timed(index.add_points, payloads, vectors)
        _, r["close"] = _timed(index.close)
        index, r["reopen"] = _timed(open_)
        missing, r["rerun"] = _timed(index.missing, ids)
        assert not missing and index.count() == n
        r["size"] = _size_mb(folder)
        local = index.engine_default is False  # local mode: time its engine on the sample only

        one, t = _timed(lambda: [index.search(q[None], 10, engine=True)[0] for q in sample])
        r["one unfiltered"] = t / len(sample) * 1000
        _, t = _timed(lambda: [index.search(q[None], 10, labelled=True, split="train",
                                            engine=True) for q in sample])
        r["one filtered"] = t / len(sample) * 1000
        batch = sample if local else queries
        engine, t = _timed(index.search, batch, 10, labelled=True, split="train", engine=True)
        r["batch engine"] = t / len(batch) * 1000
        matrix, t = _timed(index.search, queries, 10, labelled=True, split="train",
                           engine=False)
        r["batch matrix"] = t / len(queries) * 1000
        r["batch default"] = r["batch engine"] if index.engine_default else r["batch matrix"]
        r["exact"] = (f"{agree(one, truth_all) + agree(engine, truth_filtered)}"
                      f"/{len(one) + len(engine)} in engine, "
                      f"{agree(matrix, truth_filtered)}/{len(matrix)} matrix")
        index.close()
        return r

    with tempfile.TemporaryDirectory() as tmp:
        local_dir, edge_dir = Path(tmp) / "qdrant", Path(tmp) / "qdrant-edge"
        local = measure(lambda: ServerIndex(QdrantClient(path=str(local_dir)), workload,
                                            local=True), local_dir)
        edge = measure(lambda: EdgeIndex.open(edge_dir / collection_name(workload), workload),
                       edge_dir)

    rows = [  # label, key, unit, lower is better
        ("upsert", "upsert", "points/s", False),
        ("close (Edge: flush segments)", "close", "s", True),
        ("reopen from disk", "reopen", "s", True),
        ("rerun: all present", "rerun", "s", True),
        ("top-10 unfiltered, one query", "one unfiltered", "ms", True),
        ("top-10 filtered, one query", "one filtered", "ms", True),
        (f"top-10 filtered, batch of {len(queries)}, engine", "batch engine", "ms/query", True),
        (f"top-10 filtered, batch of {len(queries)}, matrix", "batch matrix", "ms/query", True),
        (f"top-10 filtered, batch of {len(queries)}, default", "batch default", "ms/query",
         True),
        ("size on disk", "size", "MB", True),
    ]
    print(f"Embedded Qdrant, {n} points x 384-d, {len(queries)} queries, top-10 "
          f"(random unit vectors; filtered = labelled and train, {admitted.sum()} points)")
    print(f"  {'':44s} {'local mode':>12s} {'Qdrant Edge':>12s}  Edge vs local mode")
    for label, key, unit, lower in rows:
        a, b = local[key], edge[key]
        if key == "upsert":
            a, b = n / a, n / b
        ratio = (a / b if lower else b / a) if min(a, b) > 0 else float("nan")
        word = "faster" if key != "size" else "smaller"
        if ratio < 1:
            ratio, word = 1 / ratio, {"faster": "slower", "smaller": "larger"}[word]
        print(f"  {label:44s} {a:12.{0 if key == 'upsert' else 3}f} "
              f"{b:12.{0 if key == 'upsert' else 3}f}  {ratio:7.1f}x {word}  ({unit})")
    a, b = local["upsert"] + local["close"], edge["upsert"] + edge["close"]
    print(f"  {'upsert + close':44s} {a:12.3f} {b:12.3f}  {a / b:7.1f}x faster  (s)")
    print(f"  same neighbours as exact search: local mode {local['exact']}; "
          f"Edge {edge['exact']}")


if __name__ == "__main__":
    main()
