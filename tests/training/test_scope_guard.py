"""The scope guard: built from training queries alone, it sends queries unlike them to the
fallback expert, at about the in-scope cost it was given, and travels with the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.core.embeddings import embed_queries
from tasks.demo.clinc150 import FALLBACK_EXPERT, examples
from tasks.training.scope_guard import (
    GUARD_FILE,
    MIN_REFERENCE,
    NEIGHBOURS,
    ScopeGuard,
    build_for_training_set,
)


@pytest.fixture(scope="module")
def clinc():
    rows = examples()
    rng = np.random.default_rng(0)
    train = [rows[i] for i in rng.permutation(len(rows)) if rows[i].split == "train"][:1500]
    val = [e for e in rows if e.split == "val"]
    return train, val


@pytest.fixture(scope="module")
def guard(clinc):
    train, _ = clinc
    return ScopeGuard.build([e.query for e in train], [e.expert for e in train], budget=0.05,
                            fallback=FALLBACK_EXPERT)


def test_guard_keeps_about_its_budget_of_in_scope_and_catches_out_of_scope(guard, clinc):
    _, val = clinc
    in_scope = [e.query for e in val if e.expert != FALLBACK_EXPERT]
    oos = [e.query for e in val if e.expert == FALLBACK_EXPERT]
    lost = np.mean(guard.out_of_scope(in_scope))
    caught = np.mean(guard.out_of_scope(oos))
    # the leave-one-out threshold predicts the share of held-out in-scope queries it loses
    assert 0.02 <= lost <= 0.10, lost
    assert caught >= 0.5, caught  # far above the 5% a threshold unrelated to scope would give
    assert len(guard.vectors) == len({e.query.strip() for e in clinc[0]
                                      if e.expert != FALLBACK_EXPERT})


def test_apply_replaces_only_flagged_predictions(guard):
    queries = ["how do i transfer money to my savings account", "blorf quantum zebra kazoo"]
    flagged = guard.out_of_scope(queries)
    assert flagged == [False, True]
    assert guard.apply(queries, ["banking", "banking"]) == ["banking", FALLBACK_EXPERT]
    with pytest.raises(ValueError, match="2 queries but 1"):
        guard.apply(queries, ["banking"])


def test_save_and_load_round_trip(guard, tmp_path):
    guard.save(tmp_path)
    loaded = ScopeGuard.load(tmp_path)
    assert loaded.threshold == pytest.approx(guard.threshold)
    assert loaded.budget == 0.05 and loaded.vectors.shape == guard.vectors.shape
    assert loaded.neighbours == guard.neighbours == NEIGHBOURS
    assert ScopeGuard.load(tmp_path / "elsewhere") is None
    assert ScopeGuard.load(None) is None
    (tmp_path / GUARD_FILE).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable"):
        ScopeGuard.load(tmp_path)


def test_score_is_the_mean_similarity_to_the_nearest_neighbours(guard, tmp_path):
    queries = ["can you block my credit card", "what is the weather like in paris tomorrow"]
    similar = embed_queries(queries) @ guard.vectors.astype(np.float32).T
    expected = np.sort(similar, axis=1)[:, -NEIGHBOURS:].mean(axis=1)
    assert guard.similarity(queries) == pytest.approx(expected, abs=1e-5)
    # a guard saved before the score averaged neighbours loads with the nearest one, as it was built
    np.savez_compressed(tmp_path / GUARD_FILE, vectors=guard.vectors, meta=np.array(json.dumps(
        {"threshold": guard.threshold, "budget": 0.05, "fallback": FALLBACK_EXPERT})))
    legacy = ScopeGuard.load(tmp_path)
    assert legacy.neighbours == 1
    assert legacy.similarity(queries) == pytest.approx(similar.max(axis=1), abs=1e-5)


def test_bad_input_is_refused():
    queries = [f"question number {i} about my bank card" for i in range(MIN_REFERENCE)]
    with pytest.raises(ValueError, match="budget"):
        ScopeGuard.build(queries, ["banking"] * len(queries), budget=0.7, fallback="x")
    with pytest.raises(ValueError, match="queries but"):
        ScopeGuard.build(queries, ["banking"], budget=0.05, fallback="x")
    with pytest.raises(ValueError, match="at least"):  # duplicates and out-of-scope don't count
        ScopeGuard.build(queries[:5] * 10 + ["what is love"],
                         ["banking"] * 50 + [FALLBACK_EXPERT], budget=0.05,
                         fallback=FALLBACK_EXPERT)
    with pytest.raises(ValueError, match="neighbours"):
        ScopeGuard.build(queries, ["banking"] * len(queries), neighbours=0, fallback="x")
    with pytest.raises(ValueError, match="neighbours"):
        ScopeGuard(vectors=np.eye(3, dtype=np.float16), threshold=0.5, budget=0.05,
                   fallback="x", neighbours=4)


def test_build_for_training_set_skips_small_sets_and_zero_budget(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"query": f"q {i}", "expert": "banking"}) + "\n"
                             for i in range(5)))
    assert build_for_training_set(train, 0.05, tmp_path, FALLBACK_EXPERT) is None
    assert "no scope guard" in capsys.readouterr().out
    assert build_for_training_set(train, 0.0, tmp_path, FALLBACK_EXPERT) is None
    # a workload without a fallback expert has nowhere to send an unfamiliar query: no guard
    assert build_for_training_set(train, 0.05, tmp_path, None) is None
    assert "no fallback expert" in capsys.readouterr().out
    assert not (tmp_path / GUARD_FILE).exists()
