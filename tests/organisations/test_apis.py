import pytest

from clearinghouse.organisations.models import Organisation
from tests.factories import api_client, make_user


@pytest.fixture
def applicant(db):
    return api_client(make_user("applicant"))


def test_apply_through_the_api(applicant):
    response = applicant.post(
        "/api/v1/organisations",
        {"name": "Acme", "slug": "acme", "country": "DE", "contact_email": "a@acme.example.org"},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["status"] == "pending"
    assert applicant.get("/api/v1/me").json()["organisation"] == "acme"


@pytest.mark.parametrize(
    "body,code",
    [
        (
            {"name": "", "slug": "acme", "country": "DE", "contact_email": "a@acme.example.org"},
            "invalid_name",
        ),
        (
            {"name": "A" * 5000, "slug": "acme", "country": "DE", "contact_email": "a@acme.example.org"},
            "invalid_name",
        ),
        (
            {"name": "Acme", "slug": "../etc", "country": "DE", "contact_email": "a@acme.example.org"},
            "invalid_slug",
        ),
        ({"name": "Acme", "slug": "acme", "country": "DE"}, "invalid"),
        (
            {"name": ["Acme"], "slug": "acme", "country": "DE", "contact_email": "a@acme.example.org"},
            "invalid",
        ),
    ],
)
def test_bad_input_gets_a_stable_code_and_writes_nothing(applicant, body, code):
    response = applicant.post("/api/v1/organisations", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["detail"]
    assert not Organisation.objects.exists()


def test_malformed_json_is_a_400_with_code(applicant):
    response = applicant.generic(
        "POST", "/api/v1/organisations", b"{not json", content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_unknown_api_path_is_json_404(applicant):
    response = applicant.get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.json() == {"code": "not_found", "detail": "Not found."}


def test_unauthenticated_is_401_with_code(db):
    response = api_client(None).get("/api/v1/me")
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
