"""Qdrant local mode: indexing and query times of the flywheel's query index, beside in-memory.

Run it::

    .venv/bin/python tests/benchmarks/bench_qdrant.py --points 5000 --queries 500

Vectors are random unit vectors (384-d), so the numbers measure Qdrant, not the encoder (which
embeds ~400 short sentences/s on two cores). Printed: upsert time into local mode on disk
(``path=``, one SQLite commit per point) against ``:memory:`` measured in the same run, the time
to reopen the collection from disk, a rerun of indexing that finds every point present, and
top-10 search for a batch of queries, filtered to labelled train points, inside Qdrant against
:meth:`tasks.vectors.QueryIndex.search`'s matrix path.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    from qdrant_client import QdrantClient
    from qdrant_client.http import models

    from tasks.vectors import QueryIndex, point_id

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.points, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"r{i}" for i in range(args.points)]
    labels = ["banking", "travel", "home", None]

    def points(workload: str) -> list[models.PointStruct]:
        return [models.PointStruct(
            id=point_id(workload, rid), vector=v.tolist(),
            payload={"record_id": rid, "query": rid, "label": labels[i % 4],
                     "split": "train" if i % 3 else "test"})
            for i, (rid, v) in enumerate(zip(ids, vectors, strict=True))]

    def upsert(index: QueryIndex) -> float:
        batch = points(index.workload_id)
        start = time.perf_counter()
        for s in range(0, len(batch), 256):
            index.client.upsert(index.collection, batch[s:s + 256], wait=True)
        return time.perf_counter() - start

    memory = QueryIndex(QdrantClient(location=":memory:"), "bench", local=True)
    t_memory = upsert(memory)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "qdrant")
        disk = QueryIndex(QdrantClient(path=path), "bench", local=True)
        t_disk = upsert(disk)
        disk.client.close()
        start = time.perf_counter()
        disk = QueryIndex(QdrantClient(path=path), "bench", local=True)
        t_open = time.perf_counter() - start
        start = time.perf_counter()
        missing = disk.missing(ids)
        t_missing = time.perf_counter() - start
        assert not missing

        queries = vectors[rng.choice(args.points, size=args.queries, replace=False)]
        start = time.perf_counter()
        matrix = disk.search(queries, 10, labelled=True, split="train", engine=False)
        t_matrix = time.perf_counter() - start
        sample = max(1, min(args.queries, 50))
        start = time.perf_counter()
        engine = disk.search(queries[:sample], 10, labelled=True, split="train", engine=True)
        t_engine = (time.perf_counter() - start) * args.queries / sample
        assert [[h.record_id for h in hits] for hits in engine] == \
               [[h.record_id for h in hits] for hits in matrix[:sample]]
        start = time.perf_counter()
        disk.search(queries[:sample], 10, engine=True)
        t_unfiltered = (time.perf_counter() - start) / sample
        disk.client.close()

    n = args.points
    print(f"Qdrant local mode, {n} points x 384-d, {args.queries} queries (random unit vectors)")
    print(f"  upsert :memory:           {t_memory:8.2f} s  ({n / t_memory:8.0f} points/s)")
    print(f"  upsert path= (disk)       {t_disk:8.2f} s  ({n / t_disk:8.0f} points/s)  "
          f"{t_disk / t_memory:.1f}x :memory:")
    print(f"  reopen from disk          {t_open:8.2f} s")
    print(f"  rerun: all present        {t_missing:8.2f} s  (retrieve {n} ids, nothing to embed)")
    print(f"  top-10 unfiltered, engine {t_unfiltered * 1000:8.1f} ms/query")
    print(f"  top-10 filtered, engine   {t_engine / args.queries * 1000:8.1f} ms/query "
          f"({t_engine:.2f} s for the batch, from {sample} queries)")
    print(f"  top-10 filtered, matrix   {t_matrix / args.queries * 1000:8.1f} ms/query "
          f"({t_matrix:.2f} s for the batch)  {t_engine / t_matrix:.0f}x faster than engine")


if __name__ == "__main__":
    main()
