"""The datasets API parses its input once, through each operation's input serializer: typed values,
and bad input answered 400 with a stable code (never a 500, never silently taken for something else)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.datasets.models import DatasetVersion
from tests.datasets.test_datasets import register, upload
from tests.factories import api_client

pytestmark = pytest.mark.usefixtures("media_root")

CSV = b"age,sex,educ,race,income,married\n30,1,9,1,1000,1\n"


def staged(media_root) -> list[str]:
    folder = media_root / "staging"
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({}, {"has_header": True, "delimiter": "", "quote_char": '"', "repair": "none"}),
        ({"header": "true"}, {"has_header": True}),
        # "off" (an HTML checkbox's word) was taken for a header before: only false/0/no counted.
        ({"header": "off"}, {"has_header": False}),
        ({"header": "false"}, {"has_header": False}),
        ({"header": "0"}, {"has_header": False}),
        ({"delimiter": "tab"}, {"delimiter": "\t"}),
        ({"delimiter": "\\t"}, {"delimiter": "\t"}),
        ({"delimiter": ";"}, {"delimiter": ";"}),
        ({"quote": "none"}, {"quote_char": ""}),
        ({"quote": "'"}, {"quote_char": "'"}),
        ({"quote": ""}, {"quote_char": ""}),
        ({"repair": ""}, {"repair": "none"}),
        ({"repair": "clamp"}, {"repair": "clamp"}),
    ],
)
def test_upload_fields_are_typed_by_the_input_serializer(world, fields, expected):
    client = api_client(world.a.steward)
    register(client)
    response = upload(client, "pums", CSV, **fields)
    assert response.status_code == 202, response.json()
    version = DatasetVersion.objects.get(dataset__slug="pums", number=response.json()["number"])
    assert {name: getattr(version, name) for name in expected} == expected


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"header": "maybe"}, "header"),  # was taken for "yes" before
        ({"header": "2"}, "header"),
        ({"delimiter": ";" * 10_001}, "delimiter"),
        ({"repair": "x" * 10_001}, "repair"),
    ],
)
def test_bad_upload_fields_answer_400_and_stage_nothing(world, media_root, fields, field):
    client = api_client(world.a.steward)
    register(client)
    before = staged(media_root)
    response = upload(client, "pums", CSV, **fields)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and field in body["fields"]
    assert not DatasetVersion.objects.filter(dataset__slug="pums").exists()
    assert staged(media_root) == before


@pytest.mark.parametrize(
    "fields,code",
    [
        ({"delimiter": "ab"}, "invalid_delimiter"),
        ({"quote": "`"}, "invalid_quote"),
        ({"format": "xls"}, "invalid_format"),
        ({"repair": "bogus"}, "invalid_repair"),
    ],
)
def test_upload_values_the_service_refuses_keep_their_codes(world, media_root, fields, code):
    client = api_client(world.a.steward)
    register(client)
    before = staged(media_root)
    response = upload(client, "pums", CSV, **fields)
    assert response.status_code == 400 and response.json()["code"] == code
    assert staged(media_root) == before


def test_a_json_upload_without_a_file_is_file_required(world):
    client = api_client(world.a.steward)
    register(client)
    response = client.post(
        "/api/v1/datasets/org-a/pums/versions", {"file": "x", "delimiter": 5}, format="json"
    )
    assert response.status_code == 400 and response.json()["code"] == "file_required"


def _agreement_to_accept(world):
    owner = api_client(world.a.steward)
    if owner.get("/api/v1/datasets/org-a/pums").status_code == 404:  # once per test (hypothesis reruns)
        register(owner)
        published = owner.post("/api/v1/datasets/org-a/pums/agreement", {"text": "Be nice."}, format="json")
        assert published.status_code == 201
    return api_client(world.a.analyst)


_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(version=st.integers(min_value=-(10**30), max_value=10**30))
def test_any_agreement_version_number_gets_a_json_answer(world, version):
    response = _agreement_to_accept(world).post(
        "/api/v1/datasets/org-a/pums/agreement/accept", {"version": version}, format="json"
    )
    if version == 1:
        assert response.status_code == 201
    else:  # below 1: invalid; another number: no such agreement version
        assert response.status_code in {400, 404, 409} and isinstance(response.json()["code"], str)


@_SETTINGS
@given(
    version=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
        st.text(alphabet="abcxyz.,- ", min_size=1, max_size=20),
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=3),
        # (No NUL in the keys: a body holding NUL is refused whole by the parser, `parse_error`.)
        st.dictionaries(
            st.text(st.characters(exclude_characters="\x00"), max_size=3), st.integers(), max_size=2
        ),
    )
)
def test_an_agreement_version_that_is_not_a_whole_number_is_400(world, version):
    response = _agreement_to_accept(world).post(
        "/api/v1/datasets/org-a/pums/agreement/accept", {"version": version}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and "version" in body["fields"]
