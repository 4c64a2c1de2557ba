"""Fixtures of the training core's tests: a tiny random BERT saved as a local model directory.

Saving it (model + tokenizer) to disk and passing the directory as ``base_model`` exercises the
same local-directory path as a real deployment, in milliseconds instead of seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

LABELS = ("ham", "spam")
SPAM_WORDS = ["win", "prize", "free", "cash", "claim", "urgent", "offer", "winner", "bonus", "txt"]
HAM_WORDS = ["lunch", "home", "later", "mum", "meeting", "dinner", "tomorrow", "sorry", "love", "bus"]
FILLER = ["the", "a", "to", "you", "now", "at", "is", "ok"]


def make_texts(n: int, *, seed: int) -> tuple[list[str], list[str]]:
    """``n`` short sentences, half spam (spam words) and half ham (ham words), with shared fillers."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = LABELS[i % 2]
        vocab = SPAM_WORDS if label == "spam" else HAM_WORDS
        words = rng.choices(vocab, k=rng.randint(3, 6)) + rng.choices(FILLER, k=rng.randint(0, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SPAM_WORDS, *HAM_WORDS, *FILLER]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained on a directory holding only vocab.txt works on transformers 4 and 5 alike (the
    # constructors differ: v5 ignores ``vocab_file=`` and silently maps every word to [UNK]).
    tokenizer = BertTokenizerFast.from_pretrained(str(directory))
    assert tokenizer.unk_token_id not in tokenizer("win cash lunch")["input_ids"]
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(1234)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    # Saved as a bare encoder (like MiniLM-L6): the classification head is created at load time.
    BertModel(config).save_pretrained(str(directory))
    return directory


@pytest.fixture
def make_config(tiny_model_dir: Path):
    """Factory of ``TrainConfig`` on the tiny model with test-friendly defaults."""
    from training.config import TrainConfig

    def factory(**overrides):
        # A large learning rate: the toy task must be learnt in a few dozen steps.
        values = {
            "base_model": str(tiny_model_dir),
            "labels": LABELS,
            "batch_size": 8,
            "max_length": 16,
            "learning_rate": 1e-2,
            "lora_dropout": 0.0,
            "seed": 0,
        }
        values.update(overrides)
        return TrainConfig(**values)

    return factory


@pytest.fixture(scope="session")
def toy_tables():
    """Separable toy train/test tables (spam words vs ham words)."""
    from training.data import LabelledTable

    texts, labels = make_texts(64, seed=1)
    test_texts, test_labels = make_texts(32, seed=2)
    return (
        LabelledTable.from_lists(texts=texts, labels=labels, label_names=LABELS),
        LabelledTable.from_lists(texts=test_texts, labels=test_labels, label_names=LABELS),
    )
