"""Sentence embeddings of texts: mean-pooled, L2-normalised token states of a local encoder.

The default encoder is the packaged MiniLM-L6 (``resolve_base_model("minilm-l6")``), the encoder
all-MiniLM-L6-v2 was trained with exactly this pooling. Any local Hugging Face encoder directory
works (the tests use a tiny random BERT). Nothing is downloaded: models load with
``local_files_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.annotation.errors import AnnotationError
from training.config import PACKAGED_MINILM, resolve_base_model
from training.models import mean_pooled, select_device

__all__ = ["Embedder", "load_embedder"]


@dataclass(frozen=True, eq=False)
class Embedder:
    """A loaded encoder and tokenizer; call :meth:`embed` as often as needed."""

    model: Any
    tokenizer: Any
    device: torch.device
    max_length: int = 256

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(len(texts), dimension)`` float32 unit vectors, in the order of ``texts``.

        Texts are batched by length (less padding), and the result put back in input order.
        """
        if batch_size < 1:
            raise AnnotationError("bad_batch_size", "batch_size must be at least 1")
        if any(not isinstance(t, str) for t in texts):
            raise AnnotationError("text_not_a_string", "every item to embed must be a string")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**batch).last_hidden_state
                pooled = mean_pooled(states, batch["attention_mask"])
                out[np.asarray(idx)] = pooled.float().cpu().numpy()
        return out


def load_embedder(
    base_model: str = PACKAGED_MINILM, *, device: str | torch.device | None = None, max_length: int = 256
) -> Embedder:
    """Load ``base_model`` (``"minilm-l6"`` or a local directory) on CUDA if present, else CPU."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_base_model(base_model)
    target = select_device(device)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval().to(target)
    limit = min(max_length, int(getattr(model.config, "max_position_embeddings", max_length)))
    return Embedder(model=model, tokenizer=tokenizer, device=target, max_length=limit)
