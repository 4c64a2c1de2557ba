from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"

PUMS_SCHEMA = {
    "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "sex", "type": "categorical", "categories": ["0", "1"]},
        {"name": "educ", "type": "categorical", "categories": [str(i) for i in range(1, 17)]},
        {"name": "race", "type": "categorical"},
        {"name": "income", "type": "float", "lower": 0, "upper": 500000},
        {"name": "married", "type": "boolean"},
    ],
    "privacy_unit": {"kind": "row"},
}


@pytest.fixture
def media_root(settings, tmp_path):
    """A fresh object store per test, so the no-plaintext search sees only this test's files."""
    store = tmp_path / "store"
    settings.STORAGES = {**settings.STORAGES,
                         "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                     "OPTIONS": {"location": str(store)}}}
    yield store  # Django's setting_changed signal makes default_storage re-read STORAGES
