"""Statements the service runs again and again are prepared on the PostgreSQL server
(`DATABASE_PREPARE_THRESHOLD`, clearinghouse/settings/base.py): planning one costs more than running
it for most of the service's reads."""

import os

import pytest
from django.conf import settings
from django.db import connection

from clearinghouse.organisations.models import Organisation

pytestmark = pytest.mark.django_db


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_a_statement_run_past_the_threshold_is_prepared_and_gives_the_same_rows():
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    if os.environ.get("DATABASE_PREPARE_THRESHOLD") == "":
        pytest.skip("DATABASE_PREPARE_THRESHOLD is empty: nothing is prepared")
    options = settings.DATABASES["default"].get("OPTIONS", {})
    assert options.get("server_side_binding") is True  # psycopg prepares only what the server binds
    threshold = options["prepare_threshold"]
    Organisation.objects.create(name="Prepared", slug="prepared", country="NL", contact_email="p@example.org")
    assert not any("organisations_organisation" in statement for statement in _prepared())
    answers = [
        list(Organisation.objects.filter(slug=slug).values_list("name", flat=True))
        for slug in ["prepared", "elsewhere"] * (threshold + 1)
    ]
    assert any("organisations_organisation" in statement for statement in _prepared())
    # the same answers before and after the statement was prepared, for each value bound
    assert answers == [["Prepared"], []] * (threshold + 1)
