"""The portal's shared pieces (issue 11): every long list pages with the same control instead of being
cut, the audit filter and the token count come from the selectors the API uses, the operators'
decisions come from one map, and both charts are drawn by `portal.charts`."""

from __future__ import annotations

import re
import uuid

from django.db import transaction
from django.test import Client
from django.urls import NoReverseMatch, reverse

from clearinghouse.accounts.models import APIToken
from clearinghouse.accounts.services import api_token_create, api_token_revoke
from clearinghouse.audit.models import AuditEvent
from clearinghouse.organisations.apis import OrganisationDecisionApi
from clearinghouse.organisations.models import OrganisationStatus
from clearinghouse.organisations.selectors import ORGANISATION_DECISIONS
from clearinghouse.portal.shortcuts import PAGE_SIZE
from clearinghouse.queries.ledger import allocation_set, budget_debit, budget_set
from clearinghouse.queries.models import Query
from tests.factories import api_client, make_organisation, make_user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _tokens(user, count: int) -> list[APIToken]:
    return [api_token_create(actor=user, name=f"t{i}")[0] for i in range(count)]


def test_tokens_page_pages_through_every_token_and_the_dashboard_counts_the_active_ones(world):
    user = world.a.analyst
    tokens = _tokens(user, PAGE_SIZE + 5)
    api_token_revoke(actor=user, token=tokens[0])
    client = logged_in(user)
    every = list(APIToken.objects.filter(user=user).order_by("-created_at", "-pk"))
    assert len(every) == PAGE_SIZE + 5

    first = client.get(reverse("portal:tokens")).content.decode()
    assert f"Page 1 of 2 ({PAGE_SIZE + 5} in all)" in first
    assert 'rel="next" href="?page=2"' in first and 'rel="prev"' not in first
    shown = {t.prefix for t in every if f"<code>{t.prefix}</code>" in first}
    assert len(shown) == PAGE_SIZE

    second = client.get(reverse("portal:tokens") + "?page=2").content.decode()
    assert 'rel="prev" href="?page=1"' in second and 'rel="next"' not in second
    shown_second = {t.prefix for t in every if f"<code>{t.prefix}</code>" in second}
    assert len(shown_second) == 5 and not shown & shown_second  # nothing cut, nothing twice
    # A page past the end is the last page; a page that is not a number the first.
    assert client.get(reverse("portal:tokens") + "?page=999").content.decode().count("<code>") == 5
    assert "Page 1 of 2" in client.get(reverse("portal:tokens") + "?page=x").content.decode()

    dashboard = client.get(reverse("portal:dashboard")).content.decode()
    assert f"You have {PAGE_SIZE + 4} active API tokens." in dashboard  # the revoked one is not counted


def test_a_short_list_has_no_page_control(world):
    page = logged_in(world.a.admin).get(reverse("portal:tokens")).content.decode()
    assert 'class="pager"' not in page


def test_audit_page_filters_as_the_api_does_and_keeps_the_filter_across_pages(world):
    _tokens(world.a.analyst, PAGE_SIZE + 1)
    api = api_client(world.operator)  # creates one more token, so one more event
    expected = AuditEvent.objects.filter(action="api_token.created").count()
    assert expected > PAGE_SIZE
    assert api.get("/api/v1/audit-events", {"action": "api_token.created"}).json()["count"] == expected

    operator = logged_in(world.operator)
    page = operator.get(reverse("portal:audit"), {"action": "api_token.created"}).content.decode()
    actions = set(re.findall(r"<td><code>([^<]*)</code></td>", page))
    assert actions == {"api_token.created"}
    assert f"({expected} in all)" in page
    assert 'href="?action=api_token.created&amp;page=2"' in page
    second = operator.get(reverse("portal:audit"), {"action": "api_token.created", "page": 2})
    assert set(re.findall(r"<td><code>([^<]*)</code></td>", second.content.decode())) == {"api_token.created"}


def test_jobs_are_listed_newest_first_on_every_page(world):
    from tests.federation.test_portal import draft_job

    for _ in range(PAGE_SIZE + 1):
        draft_job(world)
    operator = logged_in(world.operator)
    first = operator.get(reverse("portal:federated_jobs")).content.decode()
    second = operator.get(reverse("portal:federated_jobs"), {"page": 2}).content.decode()
    ids = [int(i) for i in re.findall(r'href="/federation/jobs/(\d+)/"', first + second)]
    assert len(ids) == len(set(ids)) and ids == sorted(ids, reverse=True)
    api_ids = [
        job["id"] for job in api_client(world.operator).get("/api/v1/federated-jobs").json()["results"]
    ]
    assert api_ids == ids[: len(api_ids)]


def test_the_api_and_the_portal_decide_from_one_map(world):
    assert OrganisationDecisionApi.ACTIONS is ORGANISATION_DECISIONS
    for action in ORGANISATION_DECISIONS:
        reverse("portal:operator_organisation_decide", kwargs={"slug": "org-a", "action": action})
        reverse("api:organisation_decide", kwargs={"slug": "org-a", "action": action})
    try:
        reverse("portal:operator_organisation_decide", kwargs={"slug": "org-a", "action": "delete"})
    except NoReverseMatch:
        pass
    else:
        raise AssertionError("the portal offers a decision the map does not know")

    pending = make_organisation(
        operator=world.operator,
        admin=make_user(f"u{uuid.uuid4().hex[:8]}"),
        slug="pending-org",
        approve=False,
    )
    url = reverse("portal:operator_organisation_decide", kwargs={"slug": pending.slug, "action": "approve"})
    assert logged_in(world.operator).post(url).status_code == 302
    pending.refresh_from_db()
    assert pending.status == ORGANISATION_DECISIONS["approve"] == OrganisationStatus.APPROVED


def test_budget_page_draws_the_spending_with_the_shared_chart(world):
    steward = world.a.steward
    budget_set(actor=steward, dataset=world.a.dataset, measure="pure", total=1.0)
    allocation_set(actor=steward, dataset=world.a.dataset, organisation=world.b.organisation, amount=1.0)
    for _ in range(2):
        query = Query.objects.create(
            dataset=world.a.dataset,
            version=world.a.dataset.versions.get(number=1),
            organisation=world.b.organisation,
            analyst=world.b.analyst,
            spec={"q": uuid.uuid4().hex},
            query_hash=uuid.uuid4().hex,
            cost=0.1,
        )
        with transaction.atomic():
            budget_debit(query=query, amount=0.1)

    page = (
        logged_in(steward).get(reverse("portal:budget_dashboard", args=["org-a", "survey"])).content.decode()
    )
    assert 'data-testid="spending-plot"' in page and '<title id="spending-plot-title">' in page
    # matplotlib's line for org-b: from nothing to 0.2 of the total on the one day (SVG y grows down).
    line = re.search(r'<g id="spending-plot-line-0" data-series="org-b">\s*<path d="([^"]+)"', page)
    ys = [float(v) for v in line.group(1).replace("M", " ").replace("L", " ").split()][1::2]
    assert len(ys) == 2 and ys[1] < ys[0]
    assert "org-b: 0.2" in page
