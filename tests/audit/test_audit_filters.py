"""The audit log's filters and links (issue 12): the API and the portal filter through the one
selector and give the same events; each filter narrows; paging keeps the filters; a bad date is a
400 (API) or a form error (portal), never a 500; an org admin never sees another organisation's
events, whatever it filters by; a row links to its object only where the viewer may see it."""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime, timedelta
from unittest import mock

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.audit.models import AuditEvent
from clearinghouse.audit.services import audit_record
from clearinghouse.portal.shortcuts import PAGE_SIZE
from tests.factories import api_client

DAYS = [date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 5)]


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _dated_events(world) -> None:
    """Two events a day on DAYS (one per organisation), written with the clock set to that day."""
    for day in DAYS:
        for side in (world.a, world.b):
            at = datetime(day.year, day.month, day.day, 12, 0, tzinfo=UTC)
            with mock.patch("django.utils.timezone.now", return_value=at), transaction.atomic():
                audit_record(actor=side.admin, action="test.dated", organisation=side.organisation)


class Viewer:
    """A user's API and portal clients, made once (an API client's token is itself an audit event)."""

    def __init__(self, user) -> None:
        self.user = user
        self.api = api_client(user)
        self.portal = _logged_in(user)


def _api_seqs(viewer: Viewer, filters: dict) -> list[int]:
    response = viewer.api.get("/api/v1/audit-events", {**filters, "limit": 1000})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == len(body["results"])
    return [event["seq"] for event in body["results"]]


def _portal_seqs(viewer: Viewer, filters: dict) -> list[int]:
    """Every page of the portal's log, following the pager's own links (so they must keep the filters)."""
    client = viewer.portal
    response = client.get(reverse("portal:audit"), filters)
    seqs: list[int] = []
    while True:
        assert response.status_code == 200
        page = response.content.decode()
        seqs += [int(seq) for seq in re.findall(r"<tr><td>(\d+)</td>", page)]
        following = re.search(r'rel="next" href="([^"]+)"', page)
        if following is None:
            return seqs
        response = client.get(reverse("portal:audit") + html.unescape(following.group(1)))


def _visible(user, world) -> list[AuditEvent]:
    events = AuditEvent.objects.order_by("-seq")
    if user != world.operator:
        events = events.filter(organisation=world.a.organisation)
    return list(events)


FILTERS = [
    {},
    {"action": "organisation.approved"},
    {"action": "dataset."},
    {"action": "dataset_version.*"},
    {"actor": "admin_org-a"},
    {"actor": "steward_org-b"},
    {"organisation": "org-a"},
    {"organisation": "org-b"},
    {"date_from": "2024-03-02"},
    {"date_to": "2024-03-02"},
    {"date_from": "2024-03-02", "date_to": "2024-03-02"},
    {"date_from": "2024-03-02", "date_to": "2024-03-04"},
    {"action": "test.dated", "organisation": "org-b", "date_from": "2024-03-01", "date_to": "2024-03-05"},
]


def _matches(event: AuditEvent, filters: dict) -> bool:
    action = filters.get("action", "")
    if action.endswith(("*", ".")):
        if not event.action.startswith(action.rstrip("*")):
            return False
    elif action and event.action != action:
        return False
    if "actor" in filters and event.actor_label != filters["actor"]:
        return False
    if "organisation" in filters and event.organisation_label != filters["organisation"]:
        return False
    day = event.created_at.date()  # the server's zone is UTC
    if "date_from" in filters and day < date.fromisoformat(filters["date_from"]):
        return False
    return not ("date_to" in filters and day > date.fromisoformat(filters["date_to"]))


@pytest.mark.parametrize("role", ["operator", "org_admin"])
def test_api_and_portal_give_the_same_events_for_the_same_filters(world, role):
    viewer = Viewer(world.operator if role == "operator" else world.a.admin)
    _dated_events(world)
    visible = _visible(viewer.user, world)
    for filters in FILTERS:
        expected = [event.seq for event in visible if _matches(event, filters)]
        assert _api_seqs(viewer, filters) == expected, filters
        assert _portal_seqs(viewer, filters) == expected, filters


def test_each_filter_narrows_to_what_it_names(world):
    operator = Viewer(world.operator)
    _dated_events(world)
    everything = set(_api_seqs(operator, {}))
    for filters in FILTERS[1:]:
        narrowed = AuditEvent.objects.filter(seq__in=_api_seqs(operator, filters))
        assert narrowed and set(narrowed.values_list("seq", flat=True)) < everything, filters
        assert all(_matches(event, filters) for event in narrowed), filters
    prefixed = {
        e.action for e in AuditEvent.objects.filter(seq__in=_api_seqs(operator, {"action": "dataset."}))
    }
    assert prefixed and all(action.startswith("dataset.") for action in prefixed)
    assert "dataset_version.ready" not in prefixed  # a prefix ends at its dot
    dated = AuditEvent.objects.filter(
        seq__in=_api_seqs(operator, {"date_from": "2024-03-02", "date_to": "2024-03-02"})
    )
    assert dated.count() == 2 and {e.created_at.date() for e in dated} == {date(2024, 3, 2)}


def test_org_admin_never_sees_another_organisations_events(world):
    admin = Viewer(world.a.admin)
    for filters in ({"organisation": "org-b"}, {"actor": "admin_org-b"}, {"action": "organisation.approved"}):
        seqs = _api_seqs(admin, filters)
        assert not AuditEvent.objects.filter(seq__in=seqs).exclude(organisation=world.a.organisation).exists()
        assert _portal_seqs(admin, filters) == seqs
    assert _api_seqs(admin, {"organisation": "org-b"}) == []
    assert AuditEvent.objects.filter(organisation_label="org-b").exists()
    page = admin.portal.get(reverse("portal:audit"), {"organisation": "org-b"}).content.decode()
    assert "admin_org-b" not in page and "No events." in page


def test_paging_keeps_the_filters(world):
    operator = Viewer(world.operator)
    for _ in range(PAGE_SIZE + 3):
        with transaction.atomic():
            audit_record(actor=world.a.admin, action="test.paged", organisation=world.a.organisation)
    filters = {"action": "test.", "actor": "admin_org-a", "date_from": timezone.now().date().isoformat()}
    page = operator.portal.get(reverse("portal:audit"), filters).content.decode()
    assert 'value="test."' in page and 'value="admin_org-a"' in page  # the form keeps its values
    following = html.unescape(re.search(r'rel="next" href="([^"]+)"', page).group(1))
    for key, value in filters.items():
        assert f"{key}={value}" in following
    assert len(_portal_seqs(operator, filters)) == PAGE_SIZE + 3
    api = operator.api.get("/api/v1/audit-events", {**filters, "limit": 10}).json()
    assert (
        api["count"] == PAGE_SIZE + 3 and "action=test." in api["next"] and "actor=admin_org-a" in api["next"]
    )


@pytest.mark.parametrize(
    ("filters", "code", "field"),
    [
        ({"date_from": "2024-13-01"}, "invalid", "date_from"),
        ({"date_to": "yesterday"}, "invalid", "date_to"),
        ({"date_from": "2024-03-05", "date_to": "2024-03-01"}, "invalid_date_range", "date_to"),
    ],
)
def test_bad_dates_are_a_400_in_the_api_and_a_form_error_in_the_portal(world, filters, code, field):
    for user in (world.operator, world.a.admin):
        response = api_client(user).get("/api/v1/audit-events", filters)
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == code and field in body.get("fields", {})
        page = _logged_in(user).get(reverse("portal:audit"), filters)
        assert page.status_code == 200
        content = page.content.decode()
        assert 'class="errorlist"' in content and "No events." in content


def test_who_may_read_the_log_is_unchanged_by_filters(world):
    response = api_client(world.a.analyst).get("/api/v1/audit-events", {"date_from": "2024-03-05"})
    assert response.status_code == 403
    backwards = {"date_from": "2024-03-05", "date_to": "2024-03-01"}
    assert api_client(world.a.analyst).get("/api/v1/audit-events", backwards).status_code == 403
    for filters in ({"date_from": "x"}, backwards):
        assert _logged_in(world.a.analyst).get(reverse("portal:audit"), filters).status_code == 403


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.dates(min_value=date(2024, 2, 28), max_value=date(2024, 3, 7)),
    length=st.integers(min_value=0, max_value=8),
)
def test_a_date_range_holds_exactly_the_events_of_its_days(world, start, length):
    if not AuditEvent.objects.filter(action="test.dated").exists():
        _dated_events(world)
    end = start + timedelta(days=length)
    filters = {"action": "test.dated", "date_from": start.isoformat(), "date_to": end.isoformat()}
    expected = 2 * sum(start <= day <= end for day in DAYS)
    assert len(_api_seqs(Viewer(world.operator), filters)) == expected
    assert len(_api_seqs(Viewer(world.a.admin), filters)) == expected // 2


def test_rows_link_to_their_objects_only_where_the_viewer_may_see_them(world):
    def links(user, filters) -> set[str]:
        page = _logged_in(user).get(reverse("portal:audit"), {**filters}).content.decode()
        return set(re.findall(r'<a href="([^"]+)" data-testid="audit-target"', page))

    dataset_a = reverse("portal:dataset", kwargs={"organisation": "org-a", "slug": world.a.dataset.slug})
    dataset_b = reverse("portal:dataset", kwargs={"organisation": "org-b", "slug": world.b.dataset.slug})
    # The operator sees every dataset, organisation and job.
    operator = links(world.operator, {"action": "dataset."})
    assert dataset_a in operator and dataset_b in operator
    assert reverse("portal:operator_organisation", kwargs={"slug": "org-b"}) in links(
        world.operator, {"action": "organisation.approved"}
    )
    assert reverse("portal:federated_job", kwargs={"job_id": world.b.job_id}) in links(
        world.operator, {"action": "federated_job."}
    )
    # An org admin: its own objects, never another organisation's (not even their slugs).
    admin = links(world.a.admin, {})
    assert dataset_a in admin and reverse("portal:organisation") in admin
    assert not any("org-b" in link for link in admin)
    assert reverse("portal:federated_job", kwargs={"job_id": world.b.job_id}) not in admin
    for link in admin:
        assert _logged_in(world.a.admin).get(link).status_code == 200, link


def test_the_last_representable_day_is_a_valid_bound(world):
    """`date_to=9999-12-31` (the day after it does not exist) answers every event, not a 500."""
    operator = world.operator
    api = api_client(operator)
    everything = api.get("/api/v1/audit-events").json()["count"]
    response = api.get("/api/v1/audit-events", {"date_to": "9999-12-31", "date_from": "0001-01-01"})
    assert response.status_code == 200 and response.json()["count"] == everything
    assert _logged_in(operator).get(reverse("portal:audit"), {"date_to": "9999-12-31"}).status_code == 200
