"""The Qdrant query index: idempotent indexing, payload updates, filtered search, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.embeddings import embed_queries
from tasks.vectors import collection_name, open_index, point_id

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
        matrix = index.search(vectors, 2, labelled=True)
        engine = index.search(vectors, 2, labelled=True, engine=True)
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
