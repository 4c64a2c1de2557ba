"""Swagger UI (/api/docs/) and ReDoc (/api/redoc/) work offline: every script, style and font comes
from the service itself, and the operations of the API render in headless Chromium."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(
    ("path", "rendered"), [("/api/docs/", ".opblock"), ("/api/redoc/", "[data-section-id]")]
)
def test_api_documentation_renders_offline(live_server, browser, path, rendered):
    here = urlsplit(live_server.url).netloc
    foreign: list[str] = []
    page = browser.new_page()

    def only_local(route):
        if urlsplit(route.request.url).netloc == here or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{live_server.url}{path}")
    page.wait_for_selector(rendered, timeout=30_000)
    assert page.locator(rendered).count() >= 10
    assert "/queries" in page.content()
    assert foreign == [], foreign
