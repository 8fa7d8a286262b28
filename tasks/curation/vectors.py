"""The Qdrant index of a workload's queries: the flywheel's semantic memory.

One collection per workload, ``<workload_id>-queries``, one point per stored record (cosine over
the unit vectors of :mod:`tasks.core.embeddings`). The point id is a UUID derived from the workload
and the record id, so indexing is idempotent and only records not yet there are embedded and
written.
Each point's payload says what the flywheel knows about the query::

    record_id, query, timestamp, route (the teacher's), rating,
    label, label_source ("feedback" | "sme"), split ("train" | "test" | null)

Readers of the index: the ``knn-vote`` judge (labelled neighbours of a badly rated query), curation
(semantic de-duplication, the train/test leakage check), novelty (queries far from everything
labelled) and in-context-example retrieval (:meth:`QueryIndex.nearest`, train split only).

Where it lives, behind one interface (:class:`QueryIndex`; callers never ask which they hold):

* embedded by default: :class:`EdgeIndex`, Qdrant Edge (``qdrant-edge-py``), Qdrant's own engine
  run inside the process, no server. One shard per collection in
  ``<home>/qdrant-edge/<workload>-queries/``, with keyword payload indexes on ``label``, ``split``
  and ``record_id``. Writes go to a write-ahead log (durable at once; segments are flushed when
  the index closes). Searches are exact (no HNSW graph is built: :meth:`EdgeIndex.open` never
  optimizes, and queries ask for exact scoring), so de-duplication and the leakage check see
  every true neighbour, at a cost that grows with the number of points. Measured on two busy
  cores with 20,000 points (``tests/benchmarks/bench_qdrant.py``): ~4,800 points/s written (local
  mode: 56), reopened in 0.12 s, a filtered top-10 in ~1 ms per query in a batch and 5-7 ms
  alone. A shard admits one process at a time (it locks its WAL), so :func:`open_index` queues
  processes on a file lock instead of failing.
* a Qdrant server when ``FLYWHEEL_QDRANT_URL`` (or a config's ``qdrant_url``) is set, with an
  optional ``FLYWHEEL_QDRANT_API_KEY``: :class:`ServerIndex` over ``qdrant-client``, for several
  workers using the index at once, or collections large enough that exact search is too slow
  and a server's HNSW index pays.

Earlier versions kept the embedded index in qdrant-client's *local mode* (``<home>/qdrant``: one
SQLite commit per point, about 45 points/s under load, brute-force search in Python). The first
time a workload's index is opened with no Edge shard, the points of its local-mode collection
(ids, vectors, payloads) are copied into a new shard, built beside its final place and renamed
into it once complete and counted, so a crash midway leaves nothing half-done. The local-mode
folder itself is left untouched and no longer read; delete it once every workload has moved.

Airflow's ``apache-airflow-providers-qdrant`` hook is not used: it builds a ``QdrantClient`` from
an Airflow connection, so it cannot open an embedded index and is unavailable when a stage runs
from the ``flywheel`` command line; the URL and key come from the environment instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.config import get_paths
from tasks.core.embeddings import DIMENSION, MODEL_NAME, embed_queries

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import qdrant_edge
    from qdrant_client import QdrantClient
    from qdrant_client.http import models

log = logging.getLogger(__name__)

#: Environment variables of the server mode.
URL_ENV = "FLYWHEEL_QDRANT_URL"
API_KEY_ENV = "FLYWHEEL_QDRANT_API_KEY"
#: Folders under the flywheel home: the Edge shards, and the local mode of earlier versions.
EDGE_DIR = "qdrant-edge"
LOCAL_MODE_DIR = "qdrant"
#: Namespace of the point ids (uuid5 of ``<workload>/<record id>``).
_NAMESPACE = uuid.UUID("6f1c3f0e-7a51-4b8e-9d0a-3c2f7e5b9a10")
#: Payload keys the filters use; indexed as keywords.
_KEYWORD_FIELDS = ("label", "split", "record_id")
_RETRIEVE_CHUNK = 1000
_UPSERT_CHUNK = 256
_SERVER_QUERY_CHUNK = 64
_EDGE_QUERY_CHUNK = 256


@dataclass(frozen=True)
class Hit:
    """One neighbour: its record id, cosine similarity and payload."""

    record_id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Where:
    """Which points a search may return, whatever the backend's filter syntax.

    Attributes:
        labelled: only points whose ``label`` is set.
        split: only points of this split.
        within: only these point ids (None: no restriction).
    """

    labelled: bool = False
    split: str | None = None
    within: tuple[str, ...] | None = None

    def __bool__(self) -> bool:
        return self.labelled or self.split is not None or self.within is not None


def point_id(workload_id: str, record_id: str) -> str:
    """The deterministic point id of a record (a UUID string, as Qdrant requires)."""
    return str(uuid.uuid5(_NAMESPACE, f"{workload_id}/{record_id}"))


def collection_name(workload_id: str) -> str:
    return f"{workload_id}-queries"


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class QueryIndex(ABC):
    """A workload's collection of queries (get one from :func:`open_index`).

    The reading, writing and searching logic lives here; a backend supplies six primitives
    (``count``, ``_get``, ``_put``, ``_set``, ``_query``, ``_scan``) and ``close``.
    """

    #: True for an index in this process's own files, False for a server.
    local: bool
    #: Whether :meth:`search` runs inside Qdrant unless told otherwise.
    engine_default: bool

    def __init__(self, workload_id: str) -> None:
        self.workload_id = workload_id
        self.collection = collection_name(workload_id)

    # ---------------------------------------------------------------------------- the backend

    @abstractmethod
    def count(self) -> int:
        """How many points the collection holds."""

    @abstractmethod
    def _get(self, point_ids: list[str], vectors: bool) -> list[Any]:
        """The stored points among ``point_ids`` (objects with ``.payload`` and ``.vector``)."""

    @abstractmethod
    def _put(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        """Upsert ``(point id, vector, payload)`` triples, durably."""

    @abstractmethod
    def _set(self, point_ids: list[str], values: dict[str, Any]) -> None:
        """Set the payload keys ``values`` on ``point_ids``."""

    @abstractmethod
    def _query(self, vectors: np.ndarray, limit: int, where: Where) -> list[list[Hit]]:
        """Top ``limit`` points per row of ``vectors``, searched inside Qdrant."""

    @abstractmethod
    def _scan(self, where: Where) -> Iterator[tuple[dict[str, Any], list[float]]]:
        """Every ``(payload, vector)`` that ``where`` admits."""

    @abstractmethod
    def close(self) -> None:
        """Release the collection (an embedded index flushes its files)."""

    # ---------------------------------------------------------------------------- reading points

    def _retrieve(self, record_ids: Iterable[str], vectors: bool) -> dict[str, Any]:
        wanted = list(dict.fromkeys(record_ids))
        found: dict[str, Any] = {}
        for chunk in _chunks(wanted, _RETRIEVE_CHUNK):
            for point in self._get([point_id(self.workload_id, r) for r in chunk], vectors):
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
        rows = frame.drop_duplicates("id").set_index("id", drop=False)
        new = self.missing(rows["id"].tolist())
        if not new:
            return 0
        rows = rows.loc[new]
        vectors = embed_queries(rows["query"].tolist(), batch_size=batch_size)
        payloads = [{"record_id": row.id, "query": row.query,
                     "timestamp": row.timestamp.isoformat(), "route": row.route,
                     "rating": None if _isna(row.rating) else int(row.rating),
                     "label": None, "label_source": None, "split": None}
                    for row in rows.itertuples(index=False)]
        return self.add_points(payloads, vectors)

    def add_points(self, payloads: list[dict[str, Any]], vectors: np.ndarray) -> int:
        """Upsert one point per payload (each names its ``record_id``) with its vector.

        :meth:`index_records` embeds and calls this; the benchmark calls it with vectors of its
        own. Returns how many points were written.
        """
        import numpy as np

        rows = np.asarray(vectors, dtype=np.float32)
        points = [(point_id(self.workload_id, p["record_id"]), v.tolist(), p)
                  for p, v in zip(payloads, rows, strict=True)]
        for chunk in _chunks(points, _UPSERT_CHUNK):
            self._put(chunk)
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
                self._set(chunk, dict(values))
        return sum(len(ids) for ids in groups.values())

    # ---------------------------------------------------------------------------- searching

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
            engine: run the search inside Qdrant (the default on a server and on Qdrant Edge),
                or select the points once and score them with one matrix product
                (``engine=False``, the default on qdrant-client's local mode, which evaluates a
                payload filter in Python for every point and every query). Both give the same
                neighbours.

        Returns:
            One list of :class:`Hit` per query row.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if exclude is not None and len(exclude) != len(vectors):
            raise ValueError("exclude must give one record id per query vector")
        if (within is not None and not within) or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        where = Where(labelled=labelled, split=split, within=None if within is None else tuple(
            point_id(self.workload_id, r) for r in dict.fromkeys(within)))
        limit = k + (1 if exclude is not None else 0)
        use_engine = self.engine_default if engine is None else engine
        raw = (self._query(vectors, limit, where) if use_engine
               else self._search_matrix(vectors, limit, where))
        out = []
        for i, hits in enumerate(raw):
            if exclude is not None:
                hits = [h for h in hits if h.record_id != exclude[i]]
            out.append(hits[:k])
        return out

    def _search_matrix(self, vectors: np.ndarray, limit: int, where: Where
                       ) -> list[list[Hit]]:
        import numpy as np

        payloads: list[dict[str, Any]] = []
        matrix: list[list[float]] = []
        for payload, vector in self._scan(where):
            payloads.append(payload)
            matrix.append(vector)
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


class ServerIndex(QueryIndex):
    """The collection on a ``qdrant-client`` client: a Qdrant server, or (``local=True``) the
    client's local mode, which the benchmark and the migration of earlier indexes open."""

    def __init__(self, client: QdrantClient, workload_id: str, local: bool = False) -> None:
        super().__init__(workload_id)
        self.client = client
        self.local = local
        self.engine_default = not local
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
        if not self.local:  # local mode has no payload indexes
            for key in _KEYWORD_FIELDS:
                self.client.create_payload_index(self.collection, key,
                                                 models.PayloadSchemaType.KEYWORD)

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def _get(self, point_ids: list[str], vectors: bool) -> list[Any]:
        return self.client.retrieve(self.collection, point_ids, with_payload=True,
                                    with_vectors=vectors)

    def _put(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        from qdrant_client.http import models

        self.client.upsert(self.collection, [
            models.PointStruct(id=i, vector=v, payload=p) for i, v, p in points], wait=True)

    def _set(self, point_ids: list[str], values: dict[str, Any]) -> None:
        self.client.set_payload(self.collection, payload=values, points=point_ids, wait=True)

    def _filter(self, where: Where) -> models.Filter | None:
        from qdrant_client.http import models

        if not where:
            return None
        must: list[Any] = []
        must_not: list[Any] = []
        if where.labelled:
            must_not.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="label")))
        if where.split is not None:
            must.append(models.FieldCondition(key="split",
                                              match=models.MatchValue(value=where.split)))
        if where.within is not None:
            must.append(models.HasIdCondition(has_id=list(where.within)))
        return models.Filter(must=must or None, must_not=must_not or None)

    def _query(self, vectors: np.ndarray, limit: int, where: Where) -> list[list[Hit]]:
        from qdrant_client.http import models

        query_filter = self._filter(where)
        results: list[list[Hit]] = []
        for chunk in _chunks(list(vectors), _SERVER_QUERY_CHUNK):
            responses = self.client.query_batch_points(self.collection, [
                models.QueryRequest(query=v.tolist(), filter=query_filter, limit=limit,
                                    with_payload=True) for v in chunk])
            results.extend([Hit(p.payload["record_id"], float(p.score), dict(p.payload))
                            for p in r.points] for r in responses)
        return results

    def _scan(self, where: Where) -> Iterator[tuple[dict[str, Any], list[float]]]:
        query_filter = self._filter(where)
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, scroll_filter=query_filter,
                                                limit=_RETRIEVE_CHUNK, offset=offset,
                                                with_payload=True, with_vectors=True)
            for p in points:
                yield dict(p.payload), p.vector
            if offset is None:
                return

    def close(self) -> None:
        self.client.close()


class EdgeIndex(QueryIndex):
    """The collection as a Qdrant Edge shard in this process (open it with :meth:`open`)."""

    local = True
    engine_default = True
    #: The file beside the shard's own that records what the vectors are.
    META_FILE = "flywheel.json"

    def __init__(self, shard: qdrant_edge.EdgeShard, workload_id: str) -> None:
        super().__init__(workload_id)
        self.shard = shard

    @classmethod
    def open(cls, folder: Path, workload_id: str, local_mode: Path | None = None) -> EdgeIndex:
        """Load the shard in ``folder``, creating it (and its payload indexes) if absent.

        The caller must hold a lock that keeps other processes out of ``folder``.

        Args:
            folder: the shard's folder.
            workload_id: whose collection.
            local_mode: a qdrant-client local-mode folder of an earlier version; a new shard is
                filled with this workload's points from it (:func:`copy_local_mode`).
        """
        import qdrant_edge as qe

        if folder.is_dir():
            return cls(qe.EdgeShard.load(str(folder)), workload_id)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by a dead process
            shutil.rmtree(stale)
        staging = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=DIMENSION, distance=qe.Distance.Cosine),
            payload_memory=qe.Memory.Cached)
        index = cls(qe.EdgeShard.create(str(staging), config), workload_id)
        complete = False
        try:
            for key in _KEYWORD_FIELDS:
                index.shard.update(qe.UpdateOperation.create_field_index(
                    key, qe.PayloadSchemaType.Keyword))
            copied = copy_local_mode(local_mode, index) if local_mode else 0
            meta = {"encoder": MODEL_NAME, "dimension": DIMENSION, "workload_id": workload_id,
                    "collection": index.collection,
                    "copied_from_local_mode": str(local_mode) if copied else None,
                    "points_copied": copied}
            (staging / cls.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            complete = True
        finally:
            index.close()
            if not complete:
                shutil.rmtree(staging, ignore_errors=True)
        os.rename(staging, folder)  # the shard appears whole or not at all
        if copied:
            log.warning("moved %d points of %s from qdrant-client local mode (%s) to Qdrant "
                        "Edge (%s); the local-mode folder is no longer read", copied,
                        index.collection, local_mode, folder)
        return cls(qe.EdgeShard.load(str(folder)), workload_id)

    def count(self) -> int:
        import qdrant_edge as qe

        return self.shard.count(qe.CountRequest(exact=True))

    def _get(self, point_ids: list[str], vectors: bool) -> list[Any]:
        return self.shard.retrieve(list(point_ids), with_payload=True, with_vector=vectors)

    def _put(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        import qdrant_edge as qe

        self.shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(i, v, p) for i, v, p in points]))

    def _set(self, point_ids: list[str], values: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self.shard.update(qe.UpdateOperation.set_payload(list(point_ids), values))

    @staticmethod
    def _filter(where: Where) -> qdrant_edge.Filter | None:
        import qdrant_edge as qe

        if not where:
            return None
        must: list[Any] = []
        must_not: list[Any] = []
        if where.labelled:  # a null label counts as empty
            must_not.append(qe.IsEmptyCondition("label"))
        if where.split is not None:
            must.append(qe.FieldCondition(key="split", match=qe.MatchValue(where.split)))
        if where.within is not None:
            must.append(qe.HasIdCondition(set(where.within)))
        return qe.Filter(must=must or None, must_not=must_not or None)

    def _query(self, vectors: np.ndarray, limit: int, where: Where) -> list[list[Hit]]:
        import qdrant_edge as qe

        query_filter = self._filter(where)
        exact = qe.SearchParams(exact=True)  # the same neighbours, were segments ever optimized
        results: list[list[Hit]] = []
        for chunk in _chunks(list(vectors), _EDGE_QUERY_CHUNK):
            batch = self.shard.query_batch(qe.QueryBatchRequest([
                qe.QueryRequest(limit=limit, query=qe.Query.Nearest(v.tolist()),
                                filter=query_filter, with_payload=True, params=exact)
                for v in chunk]))
            results.extend([Hit(p.payload["record_id"], float(p.score), dict(p.payload))
                            for p in points] for points in batch)
        return results

    def _scan(self, where: Where) -> Iterator[tuple[dict[str, Any], list[float]]]:
        import qdrant_edge as qe

        query_filter = self._filter(where)
        offset = None
        while True:
            points, offset = self.shard.scroll(qe.ScrollRequest(
                offset=offset, limit=_RETRIEVE_CHUNK, filter=query_filter, with_payload=True,
                with_vector=True))
            for p in points:
                yield dict(p.payload), p.vector
            if offset is None:
                return

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()


def copy_local_mode(folder: Path, index: QueryIndex) -> int:
    """Copy ``index``'s collection from qdrant-client's local mode at ``folder``, if it is there.

    Every point keeps its id, vector and payload. The local-mode folder is opened under the lock
    earlier versions held around it (``<home>/.qdrant.lock``, beside the folder), and is not
    changed.

    Returns:
        How many points were copied (0 when the folder or the collection does not exist).

    Raises:
        RuntimeError: fewer points arrived than the collection holds.
    """
    try:
        collections = json.loads((folder / "meta.json").read_text())["collections"]
    except FileNotFoundError:
        return 0
    if index.collection not in collections:
        return 0
    from qdrant_client import QdrantClient

    from tasks.core.files import file_lock

    with file_lock(folder.parent / f".{folder.name}.lock"):
        client = QdrantClient(path=str(folder))
        try:
            expected = client.count(index.collection, exact=True).count
            copied, offset = 0, None
            while True:
                points, offset = client.scroll(index.collection, limit=_RETRIEVE_CHUNK,
                                               offset=offset, with_payload=True,
                                               with_vectors=True)
                index._put([(str(p.id), p.vector, dict(p.payload)) for p in points])
                copied += len(points)
                if offset is None:
                    break
        finally:
            client.close()
    if copied != expected or index.count() != expected:
        raise RuntimeError(f"copied {copied} of {expected} points of {index.collection} from "
                           f"{folder}; nothing was changed, open the index again to retry")
    return copied


def _isna(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def resolve_url(url: str | None = None) -> str | None:
    """The server URL: the argument, else ``$FLYWHEEL_QDRANT_URL``, else None (embedded)."""
    return url or os.environ.get(URL_ENV) or None


@contextmanager
def open_index(workload_id: str, home: str | os.PathLike[str] | None = None,
               url: str | None = None) -> Iterator[QueryIndex]:
    """Open the workload's index for the duration of a block, then close it.

    Args:
        workload_id: whose collection.
        home: flywheel home; the embedded index keeps its shard in
            ``<home>/qdrant-edge/<workload>-queries``.
        url: a Qdrant server (default ``$FLYWHEEL_QDRANT_URL``; none means embedded).
    """
    server = resolve_url(url)
    if server:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=server, api_key=os.environ.get(API_KEY_ENV) or None,
                              timeout=60)
        try:
            index: QueryIndex = ServerIndex(client, workload_id)
            yield index
        finally:
            client.close()
        return

    from tasks.core.files import file_lock

    home_dir = Path(get_paths(home).home)
    folder = home_dir / EDGE_DIR / collection_name(workload_id)
    # a shard refuses a second process outright; make it wait its turn instead
    with file_lock(folder.parent / f".{folder.name}.lock"):
        index = EdgeIndex.open(folder, workload_id, local_mode=home_dir / LOCAL_MODE_DIR)
        try:
            yield index
        finally:
            index.close()
