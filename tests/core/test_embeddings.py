"""Query embeddings: shape, unit norm, order, batching, and that meaning is what they measure."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.embeddings import DIMENSION, embed_queries


def test_unit_vectors_in_input_order_whatever_the_batch() -> None:
    texts = ["what is my checking balance", "book a flight to paris",
             "how much money is in my account", "reserve a plane ticket to rome"]
    whole = embed_queries(texts)
    assert whole.shape == (4, DIMENSION) and whole.dtype == np.float32
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    batched = embed_queries(texts, batch_size=1)
    assert np.allclose(whole, batched, atol=1e-5)
    sims = whole @ whole.T
    # paraphrases sit closer than unrelated queries: the encoder is the pretrained one
    assert sims[0, 2] > sims[0, 1] + 0.2
    assert sims[1, 3] > sims[1, 2] + 0.2


def test_empty_and_bad_input() -> None:
    assert embed_queries([]).shape == (0, DIMENSION)
    with pytest.raises(TypeError, match="list of strings"):
        embed_queries("one string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is int"):
        embed_queries(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        embed_queries(["ok"], batch_size=0)
