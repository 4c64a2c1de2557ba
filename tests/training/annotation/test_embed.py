"""Sentence embeddings: mean-pooled, unit-length, independent of batching; the real MiniLM-L6 too."""

from __future__ import annotations

import numpy as np
import pytest

from training.annotation import AnnotationError
from training.annotation.embed import load_embedder

TEXTS = ["win cash now", "lunch at home later", "claim your free prize", "sorry mum", "the bus"]


def test_unit_vectors_in_input_order_whatever_the_batching(tiny_model_dir):
    embedder = load_embedder(str(tiny_model_dir), device="cpu")
    one_by_one = np.vstack([embedder.embed([t]) for t in TEXTS])
    batched = embedder.embed(TEXTS, batch_size=2)
    assert batched.shape == (len(TEXTS), embedder.dimension) == (5, 32)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # Padding (texts of other lengths in the batch) must not change an item's vector.
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_empty_input_and_bad_arguments(tiny_model_dir):
    embedder = load_embedder(str(tiny_model_dir), device="cpu")
    assert embedder.embed([]).shape == (0, 32)
    with pytest.raises(AnnotationError) as bad_batch:
        embedder.embed(TEXTS, batch_size=0)
    assert bad_batch.value.code == "bad_batch_size"
    with pytest.raises(AnnotationError) as not_text:
        embedder.embed(["ok", 3])  # type: ignore[list-item]
    assert not_text.value.code == "text_not_a_string"


@pytest.mark.slow
def test_minilm_puts_paraphrases_closer_than_unrelated_texts(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = load_embedder(device="cpu")
    x = embedder.embed(
        [
            "Congratulations, you have won a free cash prize, call now to claim",
            "You won a prize! Claim your free cash by calling now",
            "Are we still meeting for lunch tomorrow?",
        ]
    )
    assert x.shape == (3, 384)
    similar, unrelated = float(x[0] @ x[1]), float(x[0] @ x[2])
    assert similar > 0.7 > unrelated
