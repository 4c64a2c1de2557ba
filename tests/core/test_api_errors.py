"""No API request ends in a 500 or an HTML page: malformed path parameters, query parameters and
bodies sent to every /api/ route (enumerated from the URL configuration) answer 4xx JSON
`{"code", "detail"}`, and the last-resort handlers turn anything unforeseen into JSON too."""

from __future__ import annotations

import json

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.factories import api_client

# eager_dp: DP work runs in-process (no worker here), releases stay queued, as in the matrix.
from tests.security.test_authorization_matrix import MATRIX, eager_dp  # noqa: F401

HUGE = 99999999999999999999  # past a PostgreSQL bigint and SQLite's INTEGER
JUNK_BODIES = [[], "x", None, 0, True, [1, 2], {}, {"unexpected": {"nested": [HUGE]}}]
JUNK_VALUES = [
    None,
    "",
    "x",
    HUGE,
    -HUGE,
    10**400,
    -1,
    0,
    1.5,
    "nan",
    "Infinity",
    True,
    [],
    {},
    ["x"],
    {"a": "b"},
    "\x00",
    {"a": ["\x00"]},
    "\ud800",
    {"\ud800": 1},
    "x" * 20_000,
]
# Bodies json.dumps cannot write: too deep for Python's json, numbers past a float, NaN, NUL, a lone
# surrogate, not JSON at all, nothing.
RAW_BODIES = [
    "[" * 5000 + "]" * 5000,
    '{"a": ' * 3000 + "1" + "}" * 3000,
    '{"a": 1e999}',
    '{"a": NaN}',
    '{"a": "\\u0000"}',
    '{"a": "\\ud800"}',
    "{not json",
    "",
    "\x00",
]
JUNK_QUERY = [
    {"page": "abc", "limit": "abc", "offset": "-1", "wait": "nan"},
    {"limit": str(HUGE), "offset": str(HUGE), "wait": "inf"},
    {"status": "x" * 300, "action": "x" * 300},
    {"status": "\x00"},
    {"action": "\x00"},
    "action=%ED%A0%80&status=%FF%FE",
    {"format": "html"},
]  # a UTF-8-encoded surrogate, bytes not UTF-8


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """The anonymous rate limit (60/minute, in the cache) would otherwise run out across tests."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def _api_routes(resolver: URLResolver | None = None, prefix: str = "") -> dict[str, URLPattern]:
    routes: dict[str, URLPattern] = {}
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "api":
                routes |= _api_routes(pattern, "api:")
        elif prefix and isinstance(pattern, URLPattern):
            routes[f"{prefix}{pattern.name}"] = pattern
    return routes


API_ROUTES = _api_routes()


def _view_methods(pattern: URLPattern) -> list[str]:
    view_class = getattr(pattern.callback, "view_class", None) or getattr(pattern.callback, "cls", None)
    return [m for m in ("get", "post", "put", "patch", "delete") if view_class and hasattr(view_class, m)]


def _input_fields(pattern: URLPattern) -> list[str]:
    view_class = getattr(pattern.callback, "view_class", None) or getattr(pattern.callback, "cls", None)
    serializer = getattr(view_class, "InputSerializer", None)
    return list(serializer().fields) if serializer else []


def _url(world, name: str) -> str:
    """The route's URL on org A's object, built once per world: a builder that makes its object on
    first use (an annotation project) must do so before the junk requests change the world (a member
    removed, the organisation suspended)."""
    urls = world.__dict__.setdefault("_junk_urls", {})
    if not urls:
        for route, cases in MATRIX.items():
            if route in API_ROUTES:
                assert cases, f"{route} has no URL builder in the authorization matrix"
                urls[route] = cases[0].url(world, "own")
    assert name in urls, f"{name} has no URL builder in the authorization matrix"
    return urls[name]


def _base_body(world, name: str, method: str) -> dict:
    for case in MATRIX.get(name, []):
        if case.method == method:
            data = case.data(world, "own") if callable(case.data) else case.data
            if isinstance(data, dict) and "file" not in data:
                return dict(data)
    return {}


def _check(response, what: str, problems: list[str]) -> None:
    status = response.status_code
    if status >= 500:
        problems.append(f"{what}: {status} {response.content[:200]!r}")
        return
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            problems.append(f"{what}: {status} not JSON: {response.content[:120]!r}")
            return
        if not (isinstance(body, dict) and {"code", "detail"} <= set(body)):
            problems.append(f"{what}: {status} without code/detail: {body!r:.200}")


def _client(user):
    client = api_client(user)
    client.raise_request_exception = False
    return client


def test_every_api_route_is_swept():
    assert len(API_ROUTES) > 30
    assert set(API_ROUTES) <= set(MATRIX), sorted(set(API_ROUTES) - set(MATRIX))


@pytest.mark.usefixtures("eager_dp")
@pytest.mark.parametrize("actor", ["org_admin", "operator"])
def test_junk_bodies_never_5xx(world, actor):
    client = _client(world.actor(actor))
    problems: list[str] = []
    for name in API_ROUTES:
        url = _url(world, name)
        for method in ("post", "put", "patch"):
            for body in JUNK_BODIES:
                response = getattr(client, method)(url, json.dumps(body), content_type="application/json")
                _check(response, f"{method.upper()} {url} {body!r:.40}", problems)
            for raw in RAW_BODIES:
                response = getattr(client, method)(url, raw, content_type="application/json")
                _check(response, f"{method.upper()} {url} raw {raw[:20]!r}", problems)
            response = getattr(client, method)(url, "a=b", content_type="text/plain")
            _check(response, f"{method.upper()} {url} text/plain", problems)
    assert not problems, "\n".join(problems)


@pytest.mark.usefixtures("eager_dp")
@pytest.mark.parametrize("actor", ["org_admin", "operator"])
def test_junk_field_values_never_5xx(world, actor):
    client = _client(world.actor(actor))
    problems: list[str] = []
    for name, pattern in API_ROUTES.items():
        url = _url(world, name)
        for method in _view_methods(pattern):
            if method == "get":
                continue
            base = _base_body(world, name, method)
            for field in sorted(set(base) | set(_input_fields(pattern))):
                for value in JUNK_VALUES:
                    body = {**base, field: value}
                    response = getattr(client, method)(url, json.dumps(body), content_type="application/json")
                    _check(response, f"{method.upper()} {url} {field}={value!r:.40}", problems)
    assert not problems, "\n".join(problems)


@pytest.mark.usefixtures("eager_dp")  # the annotation pages' texts are read by a worker, in-process here
@pytest.mark.parametrize("actor", ["org_admin", "operator"])
def test_junk_query_parameters_never_5xx(world, actor):
    client = _client(world.actor(actor))
    problems: list[str] = []
    for name, pattern in API_ROUTES.items():
        url = _url(world, name)
        if "get" in _view_methods(pattern):
            for query in JUNK_QUERY:
                response = client.get(url, query) if isinstance(query, dict) else client.get(f"{url}?{query}")
                _check(response, f"GET {url}?{query!r:.60}", problems)
    assert not problems, "\n".join(problems)


def _int_param_routes() -> list[tuple[str, URLPattern]]:
    return [
        (name, p)
        for name, p in API_ROUTES.items()
        if any(key.endswith("_id") or key == "number" for key in p.pattern.regex.groupindex)
    ]


@pytest.mark.parametrize("bad", ["abc", str(HUGE), "-1", "1.5", "0x10", "%00", "١٢"])
def test_malformed_id_path_parameters_answer_404_json(world, bad):
    """Non-integer and out-of-range ids (a PostgreSQL bigint overflows at 2**63) are 'not found'."""
    client = _client(world.actor("operator"))
    problems: list[str] = []
    routes = _int_param_routes()
    assert len(routes) >= 12
    for name, pattern in routes:
        url = _url(world, name)
        # Replace the route's numeric segment by the malformed one.
        own = pattern.pattern.regex.groupindex
        segments = url.split("/")
        replaced = False
        for index, segment in enumerate(segments):
            if segment.isdigit() and not replaced:
                segments[index] = bad
                replaced = True
        assert replaced and own, url
        bad_url = "/".join(segments)
        # The ServerApp's callback answers any job id without its token 403, so as not to tell ids apart
        # (an id that is not a number does not reach it: 404).
        expected = 403 if name == "api:federated_job_events" and bad == str(HUGE) else 404
        for method in _view_methods(pattern):
            response = getattr(client, method)(bad_url)
            _check(response, f"{method.upper()} {bad_url}", problems)
            if response.status_code != expected:
                problems.append(f"{method.upper()} {bad_url}: {response.status_code}, expected {expected}")
    assert not problems, "\n".join(problems)


def test_unknown_api_url_wrong_method_and_bad_json_are_json(world):
    client = _client(world.actor("org_admin"))
    response = client.get("/api/v1/xyz")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    response = client.get("/api/v2/anything/at/all")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    response = client.delete("/api/v1/me")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    response = client.post("/api/v1/tokens", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "parse_error"
    response = client.post("/api/v1/tokens", "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    response = client.get("/api/v1/me", HTTP_ACCEPT="application/xml")
    assert response.status_code == 406 and response.json()["code"] == "not_acceptable"
    # Not under /api/: the portal keeps its HTML pages.
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_csrf_failure_on_the_api_is_json(world):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world.a.admin)
    response = client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    body = response.json()
    assert body["code"] in {"permission_denied", "csrf_failed"} and "CSRF" in body["detail"]


# --- The portal: HTML pages, but never a 500 --------------------------------------------------------------
PORTAL_JUNK = ["abc", str(HUGE), "-1", "1.5", "nan", "inf", "", "\x00", "x" * 20_000]
# Fields a portal form reads beyond the matrix's example (the agreement's accept button, the console's release).
PORTAL_EXTRA_BODIES = {
    "portal:dataset_agreement": [{"action": "accept", "version": "1"}],
    "portal:query_console": [{"sql": "SELECT COUNT(*) FROM survey", "epsilon": "0.1", "action": "release"}],
    "portal:federated_job_participation": [
        {"decision": "accept", "dataset": "org-a/survey", "data_description": "sms"}
    ],
}


def _portal_routes() -> list[str]:
    return [name for name in MATRIX if name.startswith("portal:")]


@pytest.mark.usefixtures("eager_dp")
@pytest.mark.parametrize("actor", ["org_admin", "operator"])
def test_portal_forms_with_junk_never_5xx(world, actor):
    from django.test import Client

    client = Client(raise_request_exception=False)
    client.force_login(world.actor(actor))
    problems: list[str] = []
    for name in _portal_routes():
        if name == "portal:logout":
            continue
        for case in MATRIX[name]:
            url = case.url(world, "own")
            if case.method == "get":
                for query in JUNK_QUERY:
                    response = (
                        client.get(url, query) if isinstance(query, dict) else client.get(f"{url}?{query}")
                    )
                    if response.status_code >= 500:
                        problems.append(f"GET {url}?{query!r:.60}: {response.status_code}")
                continue
            data = case.data(world, "own") if callable(case.data) else case.data
            if not isinstance(data, dict) or "file" in data:
                continue
            for base in [dict(data), *PORTAL_EXTRA_BODIES.get(name, [])]:
                for field in base:
                    for value in PORTAL_JUNK:
                        response = client.post(url, {**base, field: value})
                        if response.status_code >= 500:
                            problems.append(f"POST {url} {field}={value!r:.30}: {response.status_code}")
    assert not problems, "\n".join(problems)


# --- The ServerApp's per-round callback ---------------------------------------------------------------------
@pytest.fixture
def running_job(world):
    import hashlib

    from federation.models import FederatedJob, JobState

    job = FederatedJob.objects.get(pk=world.a.job_id)
    FederatedJob.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING,
        flower_run_id="123",
        callback_token_hash=hashlib.sha256(b"job-callback-token").hexdigest(),
    )
    client = _client(None)
    client.credentials(HTTP_AUTHORIZATION="Bearer job-callback-token")
    return job, client


ROUND = {
    "event": "round",
    "round": 1,
    "clients_trained": 2,
    "bytes_sent": 1000,
    "bytes_received": 900,
    "round_seconds": 3.5,
    "evaluate": {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.3},
    "clients": [{"organisation": "org-a", "evaluate": {"eval-accuracy": 0.9}}],
    "dropouts": [],
}


@pytest.mark.parametrize(
    "field",
    [
        "event",
        "round",
        "clients_trained",
        "bytes_sent",
        "bytes_received",
        "round_seconds",
        "evaluate",
        "clients",
        "dropouts",
        "reason",
    ],
)
def test_round_event_with_junk_answers_400_not_500(running_job, field):
    job, client = running_job
    problems: list[str] = []
    for value in [*JUNK_VALUES, {"accuracy": "x"}, [{"evaluate": []}], ["x", 1], {"a": "\x00"}]:
        body = {**ROUND, field: value}
        response = client.post(
            f"/api/v1/federated-jobs/{job.pk}/events", json.dumps(body), content_type="application/json"
        )
        _check(response, f"{field}={value!r:.40}", problems)
    assert not problems, "\n".join(problems)


def test_round_events_that_are_valid_are_still_recorded(running_job, world):
    from federation.models import JobRound

    job, client = running_job
    url = f"/api/v1/federated-jobs/{job.pk}/events"
    # The ServerApp writes NaN for a metric no client reported (Python's json does): stored as null.
    body = json.dumps(
        {**ROUND, "evaluate": {"accuracy": float("nan"), "loss": 0.25}, "extra": {"kept": True}}
    )
    response = client.post(url, body, content_type="application/json")
    assert response.status_code == 200, response.content
    stored = JobRound.objects.get(job=job, number=1)
    assert stored.accuracy is None and stored.loss == 0.25 and stored.clients_trained == 2
    assert stored.record["extra"] == {"kept": True} and stored.record["evaluate"]["accuracy"] is None
    # The job page renders the stored round.
    from django.test import Client

    portal = Client()
    portal.force_login(world.a.analyst)
    assert portal.get(f"/federation/jobs/{job.pk}/").status_code == 200
    for kind in ({"event": "started"}, {"event": "failed", "reason": "round 2: only 1 of 3 clients"}):
        assert client.post(url, json.dumps(kind), content_type="application/json").status_code == 200


# --- The last resort ----------------------------------------------------------------------------------------
@pytest.mark.urls("tests.core.urls_failing_views")
@pytest.mark.parametrize("url", ["/api/v1/test-crash", "/api/v1/test-crash-plain"])
def test_an_unhandled_exception_under_api_is_a_json_500_without_its_text(db, url):
    from tests.core.urls_failing_views import SECRET_DETAIL

    client = _client(None)
    response = client.get(url, HTTP_X_REQUEST_ID="req-0123456789abcdef")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == "server_error" and "req-0123456789abcdef" in body["detail"]
    assert SECRET_DETAIL not in response.content.decode()


@pytest.mark.urls("tests.core.urls_failing_views")
def test_an_unhandled_exception_in_the_portal_keeps_the_html_page(db):
    from django.test import Client

    response = Client(raise_request_exception=False).get("/test-crash-page/")
    assert response.status_code == 500 and response["Content-Type"].startswith("text/html")


@pytest.mark.urls("tests.core.urls_failing_views")
@pytest.mark.parametrize("kind", ["deadlock", "serialization"])
def test_a_deadlock_or_serialisation_failure_is_503_database_busy(db, kind):
    from tests.core.urls_failing_views import SECRET_DETAIL

    response = _client(None).post(f"/api/v1/test-deadlock?kind={kind}", {}, format="json")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["code"] == "database_busy"
    assert SECRET_DETAIL not in response.content.decode()


def test_a_bad_host_header_under_api_is_json(db):
    response = _client(None).get("/api/v1/me", HTTP_HOST="evil.example.org")
    assert response.status_code == 400 and response.json()["code"] == "bad_request"


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_nul_characters_in_portal_forms_and_queries_are_400_not_a_database_error(world, encoding):
    """PostgreSQL refuses NUL in text: refused at the door, whatever the database."""
    from urllib.parse import urlencode

    from django.test import Client

    from clearinghouse.organisations.models import Organisation

    client = Client(raise_request_exception=False)
    client.force_login(world.operator)
    url = f"/operator/organisations/{world.a.organisation.slug}/suspend/"
    data = {"reason": "under\x00investigation"}
    if encoding == "multipart":
        response = client.post(url, data)
    else:
        response = client.post(url, urlencode(data), content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert Organisation.objects.get(pk=world.a.organisation.pk).status == "approved"
    assert client.get("/audit/", {"action": "x\x00"}).status_code == 400
    response = _client(world.operator).get("/api/v1/audit-events", {"action": "x\x00"})
    assert response.status_code == 400 and response.json()["code"] == "bad_request"
