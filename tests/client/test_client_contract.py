"""Every answer the Python client receives matches the OpenAPI document the service publishes.

The client is driven through each of its calls against the real service (live_server and a real
Celery worker); a recording transport keeps every response, and each is validated by schemathesis
against the operation the document declares for its method and path (status documented, body of
the documented schema). A client that reads a field the document does not promise, or a server that
answers a shape the document does not declare, fails here.
"""

from __future__ import annotations

import httpx
import pytest

from clearinghouse_client import ClearinghouseError, Client

REF = "org-a/pums"
SQL = "SELECT educ, COUNT(*) AS n FROM pums GROUP BY educ"


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.responses: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.responses.append(response)  # the client reads and closes it; it is checked afterwards
        return response


@pytest.fixture
def document(db):
    import json

    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(schema, renderer_context={}))


def test_every_client_answer_matches_the_document(service, document):
    import schemathesis
    from schemathesis.core.transport import Response

    transport = RecordingTransport()
    with Client(service.url, service.token, timeout=60, transport=transport) as client:
        client.me()
        client.datasets()
        client.dataset(REF)
        client.budget(REF)
        with pytest.raises(ClearinghouseError):  # no agreement is set for this dataset: a 404
            client.agreement(REF)
        client.preview(REF, sql=SQL, privacy={"epsilon": 0.2})
        client.plan(REF, sql=SQL, target=20, curve=True)
        with pytest.raises(ClearinghouseError):  # a plan refused with its code
            client.plan(REF, sql="SELECT MEDIAN(age) FROM pums", target=5)
        release = client.query(REF, sql=SQL, privacy={"epsilon": 0.2}, wait=60)
        client.get_query(release.id)
        client.history(REF)
        with pytest.raises(ClearinghouseError):  # an error answer is part of the contract too
            client.query(REF, sql="SELECT nonsense FROM nowhere", privacy={"epsilon": 0.2})
        with pytest.raises(ClearinghouseError):
            client.dataset("org-a/no-such-dataset")

    schema = schemathesis.openapi.from_dict(document)
    checked: set[str] = set()
    for response in transport.responses:
        method, path = response.request.method, response.request.url.path
        operation = schema.find_operation_by_path(method, path)
        assert operation is not None, f"{method} {path}: the client calls an operation the document lacks"
        schema.validate_response(operation, Response.from_any(response))
        checked.add(f"{method} {operation.path} {response.status_code}")
    assert len(checked) >= 10, sorted(checked)
    assert any(label.endswith((" 400", " 404", " 409")) for label in checked), sorted(checked)
