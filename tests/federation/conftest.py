"""Fixtures of the Flower apps' tests: the training core's tiny random BERT (reused from
tests/training/conftest.py) and small labelled files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import DATASETS
from tests.training.conftest import LABELS, make_texts, tiny_model_dir  # noqa: F401 (fixture re-export)

SMS_SPAM = DATASETS / "sms_spam.tsv"


@pytest.fixture
def toy_tsv(tmp_path: Path) -> Path:
    """A separable toy data file with SMS-style columns (``Label<TAB>SMS``)."""
    texts, labels = make_texts(40, seed=3)
    path = tmp_path / "toy.tsv"
    path.write_text(
        "Label\tSMS\n" + "".join(f"{label}\t{text}\n" for text, label in zip(texts, labels, strict=True)),
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def task_identity():
    """Instruction messages take run/node/task ids from Flower's ``TaskIdentity``, which the
    ServerApp process has set; give tests that build messages in-process the same."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, getattr(TaskIdentity, "_task_id", None))
    TaskIdentity.run_id, TaskIdentity.node_id = 1, 1
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id = saved[0], saved[1]
    if hasattr(TaskIdentity, "_task_id"):
        TaskIdentity._task_id = saved[2]


def write_tsv(path: Path, n: int, seed: int) -> Path:
    texts, labels = make_texts(n, seed=seed)
    path.write_text(
        "Label\tSMS\n" + "".join(f"{label}\t{text}\n" for text, label in zip(texts, labels, strict=True)),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def three_nodes(tmp_path):
    return {
        101: {
            "data-path": str(write_tsv(tmp_path / "a.tsv", 40, 11)),
            "text-column": "SMS",
            "label-column": "Label",
            "organisation": "acme",
        },
        202: {
            "data-path": str(write_tsv(tmp_path / "b.tsv", 40, 12)),
            "text-column": "SMS",
            "label-column": "Label",
            "organisation": "globex",
        },
        303: {
            "data-path": str(write_tsv(tmp_path / "c.tsv", 40, 13)),
            "text-column": "SMS",
            "label-column": "Label",
            "organisation": "initech",
        },
    }
