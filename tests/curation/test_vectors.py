"""The Qdrant query index: idempotent indexing, payload updates, filtered search, persistence,
the move of an earlier local-mode index to Qdrant Edge, and one process at a time."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.embeddings import embed_queries
from tasks.curation import vectors as vectors_module
from tasks.curation.vectors import EdgeIndex, ServerIndex, collection_name, open_index, point_id

QUERIES = {
    "b1": ("what is my checking account balance", "banking"),
    "b2": ("how much money do i have in savings", "banking"),
    "t1": ("book me a flight to paris", "travel"),
    "t2": ("i need a plane ticket to rome", "travel"),
    "h1": ("turn off the kitchen lights", "home"),
    "h2": ("switch the living room lamp on", "home"),
}


def frame(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": ids, "query": [QUERIES[i][0] for i in ids],
        "timestamp": pd.to_datetime(["2026-11-20T09:00:00Z"] * len(ids), utc=True),
        "route": [QUERIES[i][1] for i in ids], "rating": pd.array([1] * len(ids), "Int64")})


def test_index_is_idempotent_and_persists(tmp_path: Path) -> None:
    with open_index("router", home=tmp_path) as index:
        assert index.index_records(frame(["b1", "t1", "h1"])) == 3
        assert index.index_records(frame(["b1", "t1", "h1", "b2"])) == 1  # only the new one
        assert index.count() == 4
        assert index.missing(["b1", "zz", "t1"]) == ["zz"]
    assert point_id("router", "b1") == point_id("router", "b1") != point_id("other", "b1")
    with open_index("router", home=tmp_path) as index:  # reopened from disk
        assert index.count() == 4
        assert index.collection == collection_name("router")
        vectors = index.vectors(["t1", "b1"])
        assert np.allclose(vectors, embed_queries([QUERIES["t1"][0], QUERIES["b1"][0]]),
                           atol=1e-5)
        with pytest.raises(KeyError, match="not in router-queries"):
            index.vectors(["nope"])
        assert index.payloads(["b1"])["b1"]["label"] is None


def test_filtered_search_labels_splits_and_self_exclusion(tmp_path: Path) -> None:
    with open_index("router", home=tmp_path) as index:
        index.index_records(frame(list(QUERIES)))
        changed = index.update_payloads({
            "b1": {"label": "banking", "split": "train"},
            "t1": {"label": "travel", "split": "train"},
            "h1": {"label": "home", "split": "test"},
            "t2": {"label": "travel", "split": "test"},
        })
        assert changed == 4
        assert index.update_payloads({"b1": {"label": "banking", "split": "train"}}) == 0
        with pytest.raises(KeyError):
            index.update_payloads({"missing": {"label": "x"}})

        vectors = index.vectors(["b2", "t2", "h2"])
        matrix = index.search(vectors, 2, labelled=True, engine=False)
        engine = index.search(vectors, 2, labelled=True)  # inside Qdrant Edge
        assert [[h.record_id for h in hits] for hits in matrix] == \
               [[h.record_id for h in hits] for hits in engine]
        assert matrix[0][0].record_id == "b1" and matrix[0][0].payload["label"] == "banking"
        assert matrix[1][0].record_id == "t2" and matrix[1][0].score > 0.99  # itself
        assert matrix[2][0].record_id == "h1"

        own = index.search(vectors, 1, labelled=True, exclude=["b2", "t2", "h2"])
        assert own[1][0].record_id == "t1"  # itself excluded: the labelled paraphrase
        train = index.nearest(["reserve a flight to berlin", "dim the lights"], k=3)
        assert all(h.payload["split"] == "train" for hits in train for h in hits)
        assert train[0][0].payload["label"] == "travel"
        assert {h.record_id for h in train[1]} <= {"b1", "t1"}  # h1 is test: never handed out
        within = index.search(vectors[:1], 5, within=["h1", "h2"])
        assert {h.record_id for h in within[0]} == {"h1", "h2"}
        assert index.search(vectors[:1], 5, within=[]) == [[]]
        with pytest.raises(ValueError, match="k must be"):
            index.search(vectors, 0)


def neighbours(index, ids: list[str], **where) -> list[list[tuple[str, float]]]:
    hits = index.search(index.vectors(ids), 3, exclude=ids, **where)
    return [[(h.record_id, round(h.score, 5)) for h in found] for found in hits]


def test_an_earlier_local_mode_index_moves_to_edge_on_first_open(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    labels = {"b1": {"label": "banking", "split": "train"},
              "t1": {"label": "travel", "split": "train"},
              "h1": {"label": "home", "split": "test"}}
    old = ServerIndex(QdrantClient(path=str(tmp_path / "qdrant")), "router", local=True)
    try:  # what an earlier version left behind
        old.index_records(frame(list(QUERIES)))
        old.update_payloads(labels)
        before = {r: old.payloads([r])[r] for r in QUERIES}
        expected = neighbours(old, list(QUERIES), labelled=True)
        expected_train = neighbours(old, ["b2", "t2"], split="train")
    finally:
        old.close()
    sqlite = tmp_path / "qdrant" / "collection" / "router-queries" / "storage.sqlite"
    size = sqlite.stat().st_size

    with open_index("router", home=tmp_path) as index:
        assert isinstance(index, EdgeIndex)
        assert index.count() == len(QUERIES)
        assert index.payloads(QUERIES) == before  # ids, payloads and labels kept
        assert neighbours(index, list(QUERIES), labelled=True) == expected
        assert neighbours(index, ["b2", "t2"], split="train") == expected_train
        assert index.index_records(frame(list(QUERIES))) == 0  # nothing to embed again
    shard = tmp_path / "qdrant-edge" / "router-queries"
    meta = json.loads((shard / EdgeIndex.META_FILE).read_text())
    assert meta["points_copied"] == len(QUERIES) and meta["encoder"]
    assert sqlite.stat().st_size == size  # the old index is left as it was
    assert not list(shard.parent.glob(".*.tmp"))
    with open_index("router", home=tmp_path) as index:  # copied once: now the shard is read
        assert index.count() == len(QUERIES)
    with open_index("other", home=tmp_path) as index:  # no old collection: an empty shard
        assert index.count() == 0


def test_a_failed_move_leaves_no_shard_and_is_retried(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from qdrant_client import QdrantClient

    old = ServerIndex(QdrantClient(path=str(tmp_path / "qdrant")), "router", local=True)
    old.index_records(frame(["b1", "t1"]))
    old.close()

    def broken(folder: Path, index: EdgeIndex) -> int:
        index.add_points([{"record_id": "b1"}], np.zeros((1, 384), dtype=np.float32) + 0.05)
        raise OSError("disk full")

    real = vectors_module.copy_local_mode
    monkeypatch.setattr(vectors_module, "copy_local_mode", broken)
    with pytest.raises(OSError, match="disk full"), open_index("router", home=tmp_path):
        pass
    edge = tmp_path / "qdrant-edge"
    assert not (edge / "router-queries").exists() and not list(edge.glob(".*.tmp"))
    monkeypatch.setattr(vectors_module, "copy_local_mode", real)
    with open_index("router", home=tmp_path) as index:
        assert index.count() == 2 and index.missing(["b1", "t1"]) == []


def test_a_second_opener_waits_for_the_first(tmp_path: Path) -> None:
    events: list[str] = []

    def second() -> None:
        with open_index("router", home=tmp_path) as index:  # the shard refuses two openers
            events.append(f"second opened, {index.count()} points")

    with open_index("router", home=tmp_path) as index:
        index.add_points([{"record_id": "x"}], np.full((1, 384), 0.05, dtype=np.float32))
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        events.append("first closing")
    waiter.join(timeout=30)
    assert events == ["first closing", "second opened, 1 points"]
