"""Fixtures of the annotation app's tests: a tiny random BERT as the project's encoder (a real local
model directory, loaded as in production, in milliseconds) and an SMS-like text dataset."""

from __future__ import annotations

import pytest

from tests.training.conftest import make_texts
from tests.training.conftest import tiny_model_dir as _tiny_model_dir

tiny_model_dir = _tiny_model_dir


@pytest.fixture(autouse=True)
def _annotation_encoder(settings, tiny_model_dir):
    settings.ANNOTATION_BASE_MODEL = str(tiny_model_dir)
    settings.ANNOTATION_CALIBRATION_ITEMS = 20


TEXT_SCHEMA = {
    "columns": [
        {"name": "id", "type": "integer", "lower": 0, "upper": 100000},
        {"name": "text", "type": "text", "max_length": 500},
        {"name": "truth", "type": "categorical", "categories": ["ham", "spam"]},
    ]
}


def text_csv(n: int = 80, *, seed: int = 7, duplicates: int = 4) -> tuple[bytes, list[str], list[str]]:
    """`n` messages (half spam) plus `duplicates` exact copies of the first ones, as CSV bytes; and the
    texts and true labels in row order."""
    import csv
    import io

    texts, labels = make_texts(n, seed=seed)
    texts, labels = texts + texts[:duplicates], labels + labels[:duplicates]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text", "truth"])
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        writer.writerow([i, text, label])
    return out.getvalue().encode(), texts, labels


@pytest.fixture
def eager_tasks():
    from clearinghouse.celery import app

    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = False
