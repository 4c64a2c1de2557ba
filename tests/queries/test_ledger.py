"""The privacy-budget ledger: atomic debits that can never overspend, even under concurrency."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection, connections, transaction

from clearinghouse.audit.models import AuditEvent
from clearinghouse.core.errors import ApplicationError, Conflict, ValidationFailed
from clearinghouse.queries.ledger import BudgetExceeded, allocation_set, budget_debit, budget_set
from clearinghouse.queries.models import BudgetAllocation, LedgerEntry, PrivacyBudget, Query
from tests.factories import build_world


def _query(world, analyst=None) -> Query:
    dataset = world.a.dataset
    analyst = analyst or world.b.analyst
    return Query.objects.create(
        dataset=dataset,
        version=dataset.versions.get(number=1),
        organisation=analyst.membership.organisation,
        analyst=analyst,
        spec={"q": uuid.uuid4().hex},
        query_hash=uuid.uuid4().hex,
        cost=0.1,
    )


def _setup(world, *, total=1.0, allocation=1.0, **extra):
    budget_set(actor=world.a.steward, dataset=world.a.dataset, measure="pure", total=total, **extra)
    allocation_set(
        actor=world.a.steward, dataset=world.a.dataset, organisation=world.b.organisation, amount=allocation
    )


def _debit(query, amount, delta=0.0):
    with transaction.atomic():
        return budget_debit(query=query, amount=amount, delta=delta)


def test_debits_until_the_allocation_is_spent_then_refuses_saying_what_is_left(world):
    _setup(world, total=5.0, allocation=0.25)
    _debit(_query(world), 0.1)
    _debit(_query(world), 0.1)
    events_before = AuditEvent.objects.count()
    with pytest.raises(BudgetExceeded) as info:
        _debit(_query(world), 0.1)
    assert "has ε=0.05 left" in info.value.message and "allocation" in info.value.message
    allocation = BudgetAllocation.objects.get(
        budget__dataset=world.a.dataset, organisation=world.b.organisation
    )
    assert allocation.spent == pytest.approx(0.2)
    assert LedgerEntry.objects.count() == 2 and AuditEvent.objects.count() == events_before


def test_total_per_query_and_analyst_caps(world):
    _setup(world, total=0.3, allocation=10, per_query_max=0.2, per_analyst_cap=0.15)
    with pytest.raises(BudgetExceeded) as info:
        _debit(_query(world), 0.25)
    assert info.value.code == "above_per_query_max"
    _debit(_query(world), 0.1)
    with pytest.raises(BudgetExceeded, match="personal cap"):
        _debit(_query(world), 0.1)
    from tests.factories import add_member_by_invitation, make_user

    colleague = make_user("colleague_b")
    add_member_by_invitation(
        organisation=world.b.organisation, admin=world.b.admin, user=colleague, role="analyst"
    )
    _debit(_query(world, colleague), 0.15)
    with pytest.raises(BudgetExceeded, match="total budget"):
        _debit(_query(world, colleague), 0.1)  # 0.25 spent of 0.3 total


def test_no_budget_or_no_allocation_spends_nothing(world):
    PrivacyBudget.objects.filter(dataset=world.a.dataset).delete()
    with pytest.raises(ApplicationError) as info:
        _debit(_query(world), 0.1)
    assert info.value.code == "no_budget"
    budget_set(actor=world.a.steward, dataset=world.a.dataset, measure="pure", total=1.0)
    with pytest.raises(BudgetExceeded, match="allocation has ε=0 left"):
        _debit(_query(world), 0.1)


def test_delta_is_budgeted_separately(world):
    _setup(world, total=1.0, allocation=1.0)
    with pytest.raises(BudgetExceeded) as info:
        _debit(_query(world), 0.1, delta=1e-6)
    assert info.value.code == "delta_exceeded"


@pytest.mark.parametrize(
    "kwargs,code",
    [
        ({"total": 0}, "invalid_budget"),
        ({"total": -1}, "invalid_budget"),
        ({"total": float("nan")}, "invalid_budget"),
        ({"total": float("inf")}, "invalid_budget"),
        ({"total": 1, "delta_total": 1.0}, "invalid_budget"),
        ({"total": 1, "measure": "renyi"}, "invalid_measure"),
        # Values a float column holds but the ledger's checks would overflow on (500 in PostgreSQL before).
        ({"total": 1.7976931348623155e308}, "invalid_budget"),
        ({"total": 1e6 * 1.000001}, "invalid_budget"),
        ({"total": 1, "per_query_max": 1e300}, "invalid_budget"),
        ({"total": 5e-324}, "invalid_budget"),
    ],
)
def test_bad_budget_settings(world, kwargs, code):
    with pytest.raises(ValidationFailed) as info:
        budget_set(actor=world.a.steward, dataset=world.a.dataset, **{"measure": "pure", **kwargs})
    assert info.value.code == code
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).total == 10.0  # unchanged


def test_total_cannot_drop_below_what_was_spent(world):
    _setup(world)
    _debit(_query(world), 0.5)
    with pytest.raises(Conflict) as info:
        budget_set(actor=world.a.steward, dataset=world.a.dataset, measure="pure", total=0.4)
    assert info.value.code == "below_spent"


def test_only_the_owner_sets_budgets(world):
    from clearinghouse.core.errors import NotFound, PermissionDenied

    with pytest.raises(NotFound):
        budget_set(actor=world.b.admin, dataset=world.a.dataset, measure="pure", total=1)
    with pytest.raises(PermissionDenied):
        budget_set(actor=world.a.analyst, dataset=world.a.dataset, measure="pure", total=1)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL (CI runs it)")
def test_fifty_concurrent_debits_against_a_budget_for_ten(transactional_db):
    world = build_world()
    _setup(world, total=1.0, allocation=1.0)
    queries = [_query(world) for _ in range(50)]
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(query):
        try:
            barrier.wait(timeout=30)
            _debit(query, 0.1)
            outcome = "released"
        except BudgetExceeded:
            outcome = "refused"
        except Exception as exc:  # noqa: BLE001 - any other failure must show in the assertion
            outcome = f"error: {exc!r}"
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(set(outcomes)) == ["refused", "released"], outcomes
    assert outcomes.count("released") == 10 and outcomes.count("refused") == 40
    budget = PrivacyBudget.objects.get(dataset=world.a.dataset)
    assert budget.spent <= budget.total
    assert LedgerEntry.objects.count() == 10
    assert sum(LedgerEntry.objects.values_list("amount", flat=True)) <= budget.total + 1e-9


def test_an_allocation_too_large_to_check_is_refused_not_a_500(world):
    from tests.factories import api_client

    response = api_client(world.a.steward).put(
        f"/api/v1/datasets/org-a/{world.a.dataset.slug}/budget/allocations/org-b",
        {"amount": 1.7976931348623155e308},
        format="json",
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_budget"
