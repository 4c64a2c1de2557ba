"""`CompiledRead` (issue 15): a read compiled once per process answers exactly as the ORM's QuerySet it
was built from, for any values; it refuses values of the wrong type, and QuerySets whose values do not
reach the SQL as parameters."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.core.compiled import CompiledRead
from clearinghouse.core.errors import NotFound
from clearinghouse.datasets.models import Dataset, DatasetVersion
from clearinghouse.datasets.selectors import (
    agreement_accepted,
    agreement_current,
    dataset_get,
    dataset_grant_active,
    dataset_list,
    dataset_version_latest_ready,
)
from clearinghouse.datasets.services import agreement_accept, dataset_grant_revoke
from clearinghouse.organisations.models import Organisation
from clearinghouse.organisations.selectors import membership_active
from tests.factories import build_world


def _fields(obj, depth: int = 3) -> dict | None:
    """An instance as its fields, its annotations and its loaded relations (three levels deep)."""
    if obj is None:
        return None
    values = {k: v for k, v in obj.__dict__.items() if k != "_state"}
    related = (
        {name: _fields(value, depth - 1) for name, value in obj._state.fields_cache.items()} if depth else {}
    )
    return {"class": type(obj).__name__, **values, "related": related}


def _organisations_by_slug_from() -> CompiledRead[Organisation]:
    return CompiledRead(
        "test: organisations by slug",
        lambda p: Organisation.objects.select_related("created_by").filter(
            slug=p.text("slug"), pk__gte=p.number("low")
        ),
    )


@pytest.fixture
def world(db, media_root):
    return build_world()


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    slug=st.one_of(
        st.sampled_from(["org-a", "org-b", "org-c", ""]), st.text(st.characters(exclude_characters="\x00"))
    ),
    low=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_a_compiled_read_answers_as_the_orm_for_any_values(slug, low):
    if not Organisation.objects.exists():
        for name in ("org-a", "org-b", "org-c"):
            Organisation.objects.create(
                name=name.title(), slug=name, country="NL", contact_email=f"c@{name}.org"
            )
    read = _organisations_by_slug_from()
    compiled = [_fields(o) for o in read.all(slug=slug, low=low)]
    plain = [_fields(o) for o in read.queryset(slug=slug, low=low)]
    assert compiled == plain


@pytest.mark.django_db
def test_it_compiles_once_and_runs_one_statement_each_time():
    Organisation.objects.create(name="A", slug="org-a", country="NL", contact_email="c@a.org")
    read = _organisations_by_slug_from()
    assert [o.slug for o in read.all(slug="org-a", low=0)] == ["org-a"]
    statement = read._statement
    with CaptureQueriesContext(connection) as captured:
        assert read.first(slug="org-a", low=10**9) is None
        assert read.first(slug="org-a", low=-1).slug == "org-a"
    assert read._statement is statement
    assert len(captured.captured_queries) == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "values",
    [
        {"slug": "org-a", "low": True},  # a bool is not an int
        {"slug": "org-a", "low": None},  # None changes the statement (IS NULL)
        {"slug": 1, "low": 0},
        {"slug": "org-a"},
        {"slug": "org-a", "low": 0, "other": 1},
    ],
)
def test_it_refuses_values_of_another_type_or_name(values):
    with pytest.raises(TypeError):
        _organisations_by_slug_from().all(**values)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "build",
    [
        lambda p: Organisation.objects.filter(slug=p.text("slug").upper()),  # a value changed
        lambda p: Organisation.objects.filter(slug__startswith=p.text("slug")),  # a pattern
        lambda p: Organisation.objects.filter(slug=p.text("slug")).values("pk"),  # not instances
        lambda p: Organisation.objects.filter(slug=p.text("slug")).prefetch_related("memberships"),
    ],
)
def test_it_refuses_a_queryset_it_cannot_run_as_the_orm_would(build):
    with pytest.raises(ImproperlyConfigured):
        CompiledRead("test: refused", build).all(slug="org-a")


def test_the_hot_reads_of_a_query_request_answer_as_the_orm(world):
    """`dataset_get` for members (compiled) against `dataset_list` (the ORM's QuerySet), and the other
    compiled reads of a query request, for owners, grantees and outsiders, before and after a grant is
    revoked."""
    c_admin = Organisation.objects.get(slug="org-c").memberships.get().user
    users = [world.a.analyst, world.b.steward, c_admin, world.operator]

    def check():
        for user in users:
            membership = membership_active(user=user)
            for organisation_slug in ("org-a", "org-b", "org-c"):
                for slug in ("survey", "other"):
                    plain = (
                        dataset_list(actor=user)
                        .filter(organisation__slug=organisation_slug, slug=slug)
                        .first()
                    )
                    try:
                        compiled = dataset_get(
                            actor=user,
                            organisation_slug=organisation_slug,
                            dataset_slug=slug,
                            membership=membership,
                        )
                    except NotFound:
                        compiled = None
                    assert _fields(compiled) == _fields(plain)

    check()
    c = Organisation.objects.get(slug="org-c")
    assert dataset_get(actor=c_admin, organisation_slug="org-a", dataset_slug="survey")  # granted
    assert dataset_grant_active(dataset=world.a.dataset, organisation_id=c.pk, purpose="query")
    assert not dataset_grant_active(dataset=world.a.dataset, organisation_id=c.pk, purpose="training")
    assert not agreement_accepted(user=c_admin, dataset=world.a.dataset)
    agreement_accept(
        actor=c_admin, dataset=world.a.dataset, version=agreement_current(dataset=world.a.dataset).version
    )
    assert agreement_accepted(user=c_admin, dataset=world.a.dataset)
    dataset_grant_revoke(actor=world.a.steward, grant=world.a.dataset.grants.get(pk=world.a.grant_id))
    assert not dataset_grant_active(dataset=world.a.dataset, organisation_id=c.pk, purpose="query")
    check()

    version = dataset_version_latest_ready(dataset=world.a.dataset)
    plain = world.a.dataset.versions.filter(status="ready").order_by("-number").first()
    assert _fields(version) == _fields(plain)
    assert version.dataset is world.a.dataset


def test_a_compiled_read_refuses_a_related_manager(world):
    read = CompiledRead(
        "test: through a relation", lambda p: world.a.dataset.versions.filter(number=p.number("number"))
    )
    with pytest.raises(ImproperlyConfigured, match="manager"):
        read.all(number=1)


def test_a_compiled_dataset_read_has_its_organisation_and_owner_flag(world):
    dataset = dataset_get(actor=world.a.analyst, organisation_slug="org-a", dataset_slug="survey")
    assert isinstance(dataset, Dataset)
    with CaptureQueriesContext(connection) as captured:
        assert dataset.organisation.slug == "org-a"
        assert dataset.viewer_is_owner is True
    assert not captured.captured_queries


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(number=st.one_of(st.sampled_from([0, 1, 2, 2**31 - 1, 2**31]), st.integers(-(2**63), 2**63 - 1)))
def test_a_placeholder_of_a_32_bit_column_answers_as_the_orm_for_any_int(world, number):
    """The backend wraps such a value (psycopg's Int4), and the ORM leaves one out of the column's
    range out of the SQL; given as a plain int, the compiled read finds the same rows."""
    read = CompiledRead(
        "test: versions by number",
        lambda p: DatasetVersion.objects.filter(number=p.number("number")).order_by("pk"),
    )
    assert [_fields(v) for v in read.all(number=number)] == [_fields(v) for v in read.queryset(number=number)]


def test_the_membership_reads_answer_as_the_orm(world):
    """`membership_of` and `user_is_suspended` (compiled) against the plain ORM reads, for members of
    an approved and of a suspended organisation, a user without one, and an operator."""
    from clearinghouse.organisations.models import Membership, OrganisationStatus
    from clearinghouse.organisations.selectors import membership_of, user_is_suspended
    from clearinghouse.organisations.services import organisation_set_status
    from tests.factories import make_user

    loner = make_user("loner")
    organisation_set_status(
        actor=world.operator, organisation=world.b.organisation, status="suspended", reason="audit"
    )
    users = [world.a.analyst, world.b.analyst, world.b.admin, loner, world.operator]
    for user in users:
        plain = Membership.objects.select_related("organisation").filter(user=user).first()
        assert _fields(membership_of(user=user)) == _fields(plain)
        suspended = Membership.objects.filter(user=user, organisation__status=OrganisationStatus.SUSPENDED)
        assert user_is_suspended(user=user) is suspended.exists()
    assert user_is_suspended(user=world.b.analyst) and not user_is_suspended(user=world.a.analyst)
    assert membership_of(user=world.a.analyst).organisation.slug == "org-a"
    assert membership_of(user=loner) is None
