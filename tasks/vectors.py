"""The Qdrant index of a workload's queries: the flywheel's semantic memory.

One collection per workload, ``<workload_id>-queries``, one point per stored record (cosine over
the unit vectors of :mod:`tasks.embeddings`). The point id is a UUID derived from the workload and
the record id, so indexing is idempotent and only records not yet there are embedded and written.
Each point's payload says what the flywheel knows about the query::

    record_id, query, timestamp, route (the teacher's), rating,
    label, label_source ("feedback" | "sme"), split ("train" | "test" | null)

Readers of the index: the ``knn-vote`` judge (labelled neighbours of a badly rated query), curation
(semantic de-duplication, the train/test leakage check), novelty (queries far from everything
labelled) and in-context-example retrieval (:meth:`QueryIndex.nearest`, train split only).

Where it lives: embedded *local mode* by default (``QdrantClient(path=<home>/qdrant)``, no server),
or a Qdrant server when ``FLYWHEEL_QDRANT_URL`` (or a config's ``qdrant_url``) is set, with an
optional ``FLYWHEEL_QDRANT_API_KEY``; the code is the same. Local mode writes one SQLite commit per
point (about 3 ms: ~58 s per 20,000 points), reads the whole collection into memory when it opens,
searches by brute force and admits one process at a time (:func:`open_index` queues processes on a
file lock instead of failing). Switch to a server past about 20,000 points per workload, or when
several workers must read the index at once.

Airflow's ``apache-airflow-providers-qdrant`` hook is not used: it builds the same ``QdrantClient``
from an Airflow connection, so it cannot open local mode and is unavailable when a stage runs from
the ``flywheel`` command line; the URL and key come from the environment instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import get_paths
from tasks.embeddings import DIMENSION, MODEL_NAME, embed_queries

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from qdrant_client import QdrantClient
    from qdrant_client.http import models

#: Environment variables of the server mode.
URL_ENV = "FLYWHEEL_QDRANT_URL"
API_KEY_ENV = "FLYWHEEL_QDRANT_API_KEY"
#: Namespace of the point ids (uuid5 of ``<workload>/<record id>``).
_NAMESPACE = uuid.UUID("6f1c3f0e-7a51-4b8e-9d0a-3c2f7e5b9a10")
_RETRIEVE_CHUNK = 1000
_UPSERT_CHUNK = 256
_SERVER_QUERY_CHUNK = 64


@dataclass(frozen=True)
class Hit:
    """One neighbour: its record id, cosine similarity and payload."""

    record_id: str
    score: float
    payload: dict[str, Any]


def point_id(workload_id: str, record_id: str) -> str:
    """The deterministic point id of a record (a UUID string, as Qdrant requires)."""
    return str(uuid.uuid5(_NAMESPACE, f"{workload_id}/{record_id}"))


def collection_name(workload_id: str) -> str:
    return f"{workload_id}-queries"


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class QueryIndex:
    """A workload's collection on an open client (get one from :func:`open_index`)."""

    def __init__(self, client: QdrantClient, workload_id: str, local: bool) -> None:
        self.client = client
        self.workload_id = workload_id
        self.local = local
        self.collection = collection_name(workload_id)
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        from qdrant_client.http import models

        if self.client.collection_exists(self.collection):
            return
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=DIMENSION, distance=models.Distance.COSINE),
            metadata={"encoder": MODEL_NAME, "workload_id": self.workload_id},
        )
        if not self.local:  # payload indexes speed up filtered search on a server
            for key in ("label", "split", "record_id"):
                self.client.create_payload_index(self.collection, key,
                                                 models.PayloadSchemaType.KEYWORD)

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    # ---------------------------------------------------------------------------- reading points

    def _retrieve(self, record_ids: Iterable[str], vectors: bool) -> dict[str, Any]:
        wanted = list(dict.fromkeys(record_ids))
        found: dict[str, Any] = {}
        for chunk in _chunks(wanted, _RETRIEVE_CHUNK):
            points = self.client.retrieve(
                self.collection, [point_id(self.workload_id, r) for r in chunk],
                with_payload=True, with_vectors=vectors)
            for point in points:
                found[point.payload["record_id"]] = point
        return found

    def missing(self, record_ids: Iterable[str]) -> list[str]:
        """The ids among ``record_ids`` that have no point yet, in input order."""
        ids = list(dict.fromkeys(record_ids))
        present = self._retrieve(ids, vectors=False)
        return [r for r in ids if r not in present]

    def payloads(self, record_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Record id -> payload of the ids that are indexed."""
        return {r: dict(p.payload) for r, p in self._retrieve(record_ids, vectors=False).items()}

    def vectors(self, record_ids: list[str]) -> np.ndarray:
        """The stored vectors of ``record_ids`` in order (every id must be indexed)."""
        import numpy as np

        found = self._retrieve(record_ids, vectors=True)
        absent = [r for r in record_ids if r not in found]
        if absent:
            raise KeyError(f"{len(absent)} record(s) not in {self.collection}, e.g. {absent[0]!r}; "
                           "index them first")
        if not record_ids:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        return np.asarray([found[r].vector for r in record_ids], dtype=np.float32)

    # ---------------------------------------------------------------------------- writing points

    def index_records(self, frame: pd.DataFrame, batch_size: int = 128) -> int:
        """Embed and add the records of ``frame`` that are not indexed yet.

        Args:
            frame: rows with ``id``, ``query``, ``timestamp``, ``route`` and ``rating``.
            batch_size: texts per forward pass of the encoder.

        Returns:
            How many points were added (0 on a rerun).
        """
        from qdrant_client.http import models

        rows = frame.drop_duplicates("id").set_index("id", drop=False)
        new = self.missing(rows["id"].tolist())
        if not new:
            return 0
        rows = rows.loc[new]
        vectors = embed_queries(rows["query"].tolist(), batch_size=batch_size)
        points = []
        for row, vector in zip(rows.itertuples(index=False), vectors, strict=True):
            rating = None if _isna(row.rating) else int(row.rating)
            points.append(models.PointStruct(
                id=point_id(self.workload_id, row.id), vector=vector.tolist(),
                payload={"record_id": row.id, "query": row.query,
                         "timestamp": row.timestamp.isoformat(), "route": row.route,
                         "rating": rating, "label": None, "label_source": None, "split": None}))
        for chunk in _chunks(points, _UPSERT_CHUNK):
            self.client.upsert(self.collection, chunk, wait=True)
        return len(points)

    def update_payloads(self, changes: dict[str, dict[str, Any]]) -> int:
        """Set payload keys of indexed records, writing only points whose values differ.

        Args:
            changes: record id -> ``{key: value}`` (e.g. ``{"label": "travel", "split": "test"}``).

        Returns:
            How many points changed.
        """
        current = self.payloads(changes)
        absent = [r for r in changes if r not in current]
        if absent:
            raise KeyError(f"{len(absent)} record(s) not in {self.collection}, e.g. {absent[0]!r}")
        groups: dict[tuple[tuple[str, Any], ...], list[str]] = {}
        for record_id, values in changes.items():
            if any(current[record_id].get(k) != v for k, v in values.items()):
                groups.setdefault(tuple(sorted(values.items())), []).append(
                    point_id(self.workload_id, record_id))
        for values, ids in groups.items():
            for chunk in _chunks(ids, _RETRIEVE_CHUNK):
                self.client.set_payload(self.collection, payload=dict(values), points=chunk,
                                        wait=True)
        return sum(len(ids) for ids in groups.values())

    # ---------------------------------------------------------------------------- searching

    def _filter(self, labelled: bool, split: str | None, within: list[str] | None
                ) -> models.Filter | None:
        from qdrant_client.http import models

        must: list[Any] = []
        must_not: list[Any] = []
        if labelled:
            must_not.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="label")))
        if split is not None:
            must.append(models.FieldCondition(key="split", match=models.MatchValue(value=split)))
        if within is not None:
            must.append(models.HasIdCondition(
                has_id=[point_id(self.workload_id, r) for r in within]))
        if not must and not must_not:
            return None
        return models.Filter(must=must or None, must_not=must_not or None)

    def search(self, vectors: np.ndarray, k: int, *, labelled: bool = False,
               split: str | None = None, within: list[str] | None = None,
               exclude: list[str] | None = None, engine: bool | None = None
               ) -> list[list[Hit]]:
        """The ``k`` most similar indexed points to each row of ``vectors``, best first.

        Args:
            vectors: ``(n, 384)`` unit vectors.
            k: neighbours per query.
            labelled: only points with a label.
            split: only points of this split (``"train"`` / ``"test"``).
            within: only these record ids.
            exclude: per query, a record id never to return (the query's own point), aligned
                with ``vectors``.
            engine: run the search inside Qdrant (default on a server). Local mode evaluates a
                payload filter in Python for every point and every query, so for a batch it is
                faster to select the points once and score them with one matrix product, which
                is what ``engine=False`` (the local default) does; both give the same neighbours.

        Returns:
            One list of :class:`Hit` per query row.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if exclude is not None and len(exclude) != len(vectors):
            raise ValueError("exclude must give one record id per query vector")
        if (within is not None and not within) or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        query_filter = self._filter(labelled, split, within)
        limit = k + (1 if exclude is not None else 0)
        use_engine = (not self.local) if engine is None else engine
        raw = (self._search_engine(vectors, limit, query_filter) if use_engine
               else self._search_matrix(vectors, limit, query_filter))
        out = []
        for i, hits in enumerate(raw):
            if exclude is not None:
                hits = [h for h in hits if h.record_id != exclude[i]]
            out.append(hits[:k])
        return out

    def _search_engine(self, vectors: np.ndarray, limit: int,
                       query_filter: models.Filter | None) -> list[list[Hit]]:
        from qdrant_client.http import models

        results: list[list[Hit]] = []
        for chunk in _chunks(list(vectors), _SERVER_QUERY_CHUNK):
            responses = self.client.query_batch_points(self.collection, [
                models.QueryRequest(query=v.tolist(), filter=query_filter, limit=limit,
                                    with_payload=True) for v in chunk])
            results.extend([Hit(p.payload["record_id"], float(p.score), dict(p.payload))
                            for p in r.points] for r in responses)
        return results

    def _search_matrix(self, vectors: np.ndarray, limit: int,
                       query_filter: models.Filter | None) -> list[list[Hit]]:
        import numpy as np

        payloads: list[dict[str, Any]] = []
        matrix: list[list[float]] = []
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, scroll_filter=query_filter,
                                                limit=_RETRIEVE_CHUNK, offset=offset,
                                                with_payload=True, with_vectors=True)
            for p in points:
                payloads.append(dict(p.payload))
                matrix.append(p.vector)
            if offset is None:
                break
        if not matrix:
            return [[] for _ in range(len(vectors))]
        keys = np.asarray(matrix, dtype=np.float32)
        results: list[list[Hit]] = []
        top = min(limit, len(keys))
        for start in range(0, len(vectors), 512):
            scores = np.asarray(vectors[start:start + 512], dtype=np.float32) @ keys.T
            best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            for row, cols in zip(scores, best, strict=True):
                order = cols[np.argsort(-row[cols], kind="stable")]
                results.append([Hit(payloads[j]["record_id"], float(row[j]), payloads[j])
                                for j in order])
        return results

    def nearest(self, queries: list[str], k: int = 5, split: str | None = "train"
                ) -> list[list[Hit]]:
        """Labelled neighbours of new query texts (in-context examples), best first.

        Args:
            queries: texts to look up (embedded here).
            k: neighbours per query.
            split: ``"train"`` (default: never hand out a test example), ``"test"``, or None
                for any labelled point.

        Returns:
            Per query, up to ``k`` hits whose payload carries ``query`` and ``label``.
        """
        return self.search(embed_queries(queries), k, labelled=True, split=split)


def _isna(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def resolve_url(url: str | None = None) -> str | None:
    """The server URL: the argument, else ``$FLYWHEEL_QDRANT_URL``, else None (local mode)."""
    return url or os.environ.get(URL_ENV) or None


@contextmanager
def open_index(workload_id: str, home: str | os.PathLike[str] | None = None,
               url: str | None = None) -> Iterator[QueryIndex]:
    """Open the workload's index for the duration of a block, then close the client.

    Args:
        workload_id: whose collection.
        home: flywheel home; local mode keeps its files in ``<home>/qdrant``.
        url: a Qdrant server (default ``$FLYWHEEL_QDRANT_URL``; none means local mode).
    """
    from qdrant_client import QdrantClient

    server = resolve_url(url)
    if server:
        client = QdrantClient(url=server, api_key=os.environ.get(API_KEY_ENV) or None,
                              timeout=60)
        try:
            yield QueryIndex(client, workload_id, local=False)
        finally:
            client.close()
        return

    from tasks.locks import file_lock

    paths = get_paths(home)
    folder = Path(paths.home) / "qdrant"
    # local mode refuses a second process outright; make it wait its turn instead
    with file_lock(Path(paths.home) / ".qdrant.lock"):
        client = QdrantClient(path=str(folder))
        try:
            yield QueryIndex(client, workload_id, local=True)
        finally:
            client.close()
