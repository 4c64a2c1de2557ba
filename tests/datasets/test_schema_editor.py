"""The portal's schema editor: one row of fields per column and the privacy unit, and the advanced
YAML/JSON view, both saved by `dataset_schema_set`. A refused schema shows the page again (400) with
what was typed and the error on its column's field, or at the line and column where the document
stopped parsing; nothing is saved."""

from __future__ import annotations

import html
import io
import re

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.audit.models import AuditEvent
from clearinghouse.datasets.models import Dataset
from clearinghouse.datasets.services import dataset_version_ingest
from tests.factories import api_client

pytestmark = pytest.mark.usefixtures("media_root")

CSV = b"age,group,note,weight\n30,a,hello,1.5\n41,b,hi there,2.5\n29,a,x,3\n"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def proposed(world) -> Dataset:
    """A dataset registered without a schema whose first upload proposed one (age integer, group
    categorical, note categorical, weight float)."""
    steward = api_client(world.a.steward)
    assert (
        steward.post("/api/v1/datasets", {"name": "Open", "slug": "open"}, format="json").status_code == 201
    )
    response = steward.post(
        "/api/v1/datasets/org-a/open/versions", {"file": io.BytesIO(CSV)}, format="multipart"
    )
    assert response.status_code == 202
    dataset = Dataset.objects.get(slug="open")
    version = dataset_version_ingest(version_id=dataset.versions.get(number=1).pk)
    assert version.status == "awaiting_schema"
    dataset.refresh_from_db()
    assert not dataset.schema_confirmed and [c["name"] for c in dataset.schema["columns"]] == [
        "age",
        "group",
        "note",
        "weight",
    ]
    return dataset


def edit_url(dataset: Dataset) -> str:
    return reverse("portal:dataset_schema_edit", args=[dataset.organisation.slug, dataset.slug])


def save_url(dataset: Dataset) -> str:
    return reverse("portal:dataset_schema", args=[dataset.organisation.slug, dataset.slug])


def form_data(**changes: str) -> dict[str, str]:
    """A complete column form for the `proposed` dataset with public facts, then `changes`."""
    data = {
        "columns[0].type": "integer",
        "columns[0].lower": "0",
        "columns[0].upper": "120",
        "columns[1].type": "categorical",
        "columns[1].categories": "a\nb\nc",
        "columns[2].type": "text",
        "columns[2].max_length": "200",
        "columns[3].type": "float",
        "columns[3].nullable": "on",
        "columns[3].lower": "0",
        "columns[3].upper": "10.5",
        "privacy_unit.kind": "row",
    }
    data.update(changes)
    return data


def field_html(page: str, name: str) -> str:
    """The HTML element of the form field `name`."""
    match = re.search(r'<(input|select|textarea)[^>]*name="' + re.escape(name) + r'"[^>]*>', page)
    assert match, f"no field {name}"
    if match.group(1) == "textarea":
        end = page.index("</textarea>", match.end())
        return page[match.start() : end]
    if match.group(1) == "select":
        return page[match.start() : page.index("</select>", match.end())]
    return match.group(0)


def test_editor_shows_each_column_with_the_public_knowledge_rule(world, proposed):
    page = logged_in(world.a.steward).get(edit_url(proposed)).content.decode()
    for name in ("age", "group", "note", "weight"):
        assert f'data-column="{name}"' in page
    assert "must come from public knowledge" in page and "not from the data" in page
    assert "This proposal was read from your data: review every column" in page
    assert 'value="29"' in field_html(page, "columns[0].lower")  # the proposal's bounds, to review
    assert 'value="41"' in field_html(page, "columns[0].upper")
    assert "Advanced: edit as YAML/JSON" in page
    assert "Waiting for this schema: version 1." in page
    # Column names are read-only: there is no field to change them.
    assert 'name="columns[0].name"' not in page


def test_column_form_saves_the_schema_through_the_service(world, proposed):
    response = logged_in(world.a.steward).post(
        save_url(proposed), form_data(**{"columns[1].categories": "a, b, c"})
    )
    assert response.status_code == 302
    proposed.refresh_from_db()
    assert proposed.schema_confirmed
    assert proposed.schema == {
        "columns": [
            {"name": "age", "type": "integer", "nullable": False, "lower": 0, "upper": 120},
            {"name": "group", "type": "categorical", "nullable": False, "categories": ["a", "b", "c"]},
            {"name": "note", "type": "text", "nullable": False, "max_length": 200},
            {"name": "weight", "type": "float", "nullable": True, "lower": 0.0, "upper": 10.5},
        ],
        "privacy_unit": {"kind": "row"},
    }
    assert AuditEvent.objects.filter(action="dataset.schema_confirmed", target_id=str(proposed.pk)).exists()


def test_identifier_privacy_unit_from_the_form(world, proposed):
    data = form_data(
        **{
            "privacy_unit.kind": "identifier",
            "privacy_unit.column": "note",
            "privacy_unit.max_rows_per_person": "3",
        }
    )
    assert logged_in(world.a.steward).post(save_url(proposed), data).status_code == 302
    proposed.refresh_from_db()
    assert proposed.schema["privacy_unit"] == {
        "kind": "identifier",
        "column": "note",
        "max_rows_per_person": 3,
    }


def test_refused_bounds_show_on_the_column_with_every_input_kept(world, proposed):
    data = form_data(**{"columns[0].lower": "150", "columns[1].categories": "x\ny"})
    response = logged_in(world.a.steward).post(save_url(proposed), data)
    assert response.status_code == 400
    page = response.content.decode()
    # The service's error, on the field its path names (columns[0].lower), and nothing saved.
    lower = page[page.index('data-column="age"') : page.index('data-column="group"')]
    assert "lower (150) must be below upper (120)" in lower
    assert 'value="150"' in field_html(page, "columns[0].lower")
    assert 'value="120"' in field_html(page, "columns[0].upper")
    assert "x\ny" in field_html(page, "columns[1].categories")
    assert 'value="200"' in field_html(page, "columns[2].max_length")
    assert "checked" in field_html(page, "columns[3].nullable")
    assert '<option value="float" selected>' in field_html(page, "columns[3].type")
    proposed.refresh_from_db()
    assert not proposed.schema_confirmed and proposed.schema["columns"][0]["upper"] == 41


@pytest.mark.parametrize(
    "changes,column,message",
    [
        ({"columns[3].upper": ""}, "weight", "numeric columns need public 'lower' and 'upper' bounds"),
        ({"columns[0].upper": "12.5"}, "age", "must be a whole number for an integer column"),
        ({"columns[1].categories": "a\na"}, "group", "categories must be distinct"),
        ({"columns[2].max_length": "0"}, "note", "a whole number from 1 to"),
        ({"columns[0].lower": "ten"}, "age", "Enter a number"),
    ],
)
def test_each_refusal_points_at_its_column(world, proposed, changes, column, message):
    response = logged_in(world.a.steward).post(save_url(proposed), form_data(**changes))
    assert response.status_code == 400
    page = response.content.decode()
    page = html.unescape(page)
    start = page.index(f'data-column="{column}"')
    row = page[start : page.index("</tr>", start)]
    assert message in row
    proposed.refresh_from_db()
    assert not proposed.schema_confirmed


def test_privacy_unit_refusal_points_at_its_field(world, proposed):
    data = form_data(**{"privacy_unit.kind": "identifier", "privacy_unit.column": "note"})
    response = logged_in(world.a.steward).post(save_url(proposed), data)
    assert response.status_code == 400
    page = response.content.decode()
    after = page[page.index('name="privacy_unit.max_rows_per_person"') :]
    assert "a whole number from 1 to 10000" in after[: after.index("</ul>")]
    assert '<option value="note" selected>' in field_html(page, "privacy_unit.column")


def test_advanced_yaml_parse_error_names_its_line_and_column_and_keeps_the_text(world, proposed):
    text = "columns:\n  - name: age\n    type: integer\n   lower: [0\n"
    response = logged_in(world.a.steward).post(save_url(proposed), {"schema": text})
    assert response.status_code == 400
    page = response.content.decode()
    assert re.search(r"Not valid YAML: [^<]* at line 4, column \d+\.", page), page
    assert "columns:\n  - name: age\n    type: integer\n   lower: [0\n" in page.replace("&#x27;", "'")
    assert re.search(r"<details[^>]*open", page)  # the advanced view is the one shown
    proposed.refresh_from_db()
    assert not proposed.schema_confirmed


def test_advanced_json_parse_error_names_its_line_and_column(world, proposed):
    text = '{\n  "columns": [\n    {"name": "age" "type": "integer"}\n  ]\n}'
    response = logged_in(world.a.steward).post(save_url(proposed), {"schema": text})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Not valid JSON: Expecting &#x27;,&#x27; delimiter at line 3, column 20." in page


def test_advanced_schema_refusal_is_shown_on_the_text(world, proposed):
    text = "columns:\n  - {name: age, type: integer, lower: 5, upper: 1}\n"
    response = logged_in(world.a.steward).post(save_url(proposed), {"schema": text})
    assert response.status_code == 400
    page = response.content.decode()
    assert "columns[0].lower: lower (5) must be below upper (1)" in page
    assert "lower: 5, upper: 1" in page


def test_advanced_view_saves_yaml(world, proposed):
    text = (
        "columns:\n"
        "  - {name: age, type: integer, lower: 0, upper: 120}\n"
        "  - {name: group, type: categorical, categories: [a, b]}\n"
    )
    response = logged_in(world.a.steward).post(save_url(proposed), {"schema": text})
    assert response.status_code == 302
    proposed.refresh_from_db()
    assert proposed.schema_confirmed and [c["name"] for c in proposed.schema["columns"]] == ["age", "group"]


def test_the_proposal_is_the_owners_writers_alone(world, proposed):
    assert logged_in(world.a.analyst).get(edit_url(proposed)).status_code == 403
    assert logged_in(world.b.admin).get(edit_url(proposed)).status_code == 404
    assert logged_in(world.operator).get(edit_url(proposed)).status_code == 403
    # A refused post by a non-owner shows no page with the proposal's columns either.
    response = logged_in(world.b.admin).post(save_url(proposed), form_data(**{"columns[0].lower": "x"}))
    assert response.status_code == 404 and b"weight" not in response.content


def test_a_form_for_columns_that_changed_meanwhile_is_refused(world, proposed):
    """A later upload replaced the proposal after the page was opened: the form's columns are stale."""
    page = logged_in(world.a.steward).get(edit_url(proposed)).content.decode()
    assert '<input type="hidden" name="column_names" value="age,group,note,weight">' in page
    stale = form_data(column_names="age,group,remark,weight")
    response = logged_in(world.a.steward).post(save_url(proposed), stale)
    assert response.status_code == 400
    assert "The schema changed since this page was opened" in html.unescape(response.content.decode())
    # The page shows the current columns with their own values, not the posted ones under other names.
    assert (
        '<input type="hidden" name="column_names" value="age,group,note,weight">' in response.content.decode()
    )
    proposed.refresh_from_db()
    assert not proposed.schema_confirmed
    fresh = form_data(column_names="age,group,note,weight")
    assert logged_in(world.a.steward).post(save_url(proposed), fresh).status_code == 302
