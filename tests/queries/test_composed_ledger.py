"""One ledger, composed: an approximate-DP budget pays query releases and DP-SGD trainings by
composing their privacy events with the accountant (`charged_epsilon`: the tighter of PLD and the
naive sum), not by adding their ε's. The budget's `spent` is the composed ε at its δ and the dataset's
total is checked against it; allocations and personal caps count each release's own cost (the
entry's amount); pure-ε budgets still add."""

from __future__ import annotations

import math
import uuid

import pytest
from django.db import transaction

from clearinghouse.core.errors import Conflict
from clearinghouse.dp.accounting import (
    ApproxEvent,
    LedgerComposition,
    SubsampledGaussianEvent,
    compose,
    event_from_dict,
)
from clearinghouse.queries import ledger
from clearinghouse.queries.ledger import (
    BudgetExceeded,
    allocation_set,
    budget_composition,
    budget_debit,
    budget_debit_training,
    budget_set,
)
from clearinghouse.queries.models import BudgetAllocation, LedgerEntry, PrivacyBudget, Query
from tests.factories import api_client

DELTA = 1e-5
# DP-SGD on a 1,000-row member: batch 10, 3 rounds of 20 steps, σ = 1.2.
PLAN = {
    "target_epsilon": 1.0,
    "delta": DELTA,
    "sample_rate": 0.01,
    "steps": 60,
    "noise_multiplier": 1.2,
    "max_grad_norm": 1.0,
    "accountant": "pld",
}
TRAINING = SubsampledGaussianEvent(sample_rate=0.01, noise_multiplier=1.2, steps=60)


def _query(world, cost: float) -> Query:
    dataset = world.a.dataset
    analyst = world.b.analyst
    return Query.objects.create(
        dataset=dataset,
        version=dataset.versions.get(number=1),
        organisation=analyst.membership.organisation,
        analyst=analyst,
        spec={"q": uuid.uuid4().hex},
        query_hash=uuid.uuid4().hex,
        cost=cost,
    )


def _release(world, cost: float, delta: float = 0.0) -> LedgerEntry:
    with transaction.atomic():
        return budget_debit(query=_query(world, cost), amount=cost, delta=delta, measure="approx")


def _train(world) -> LedgerEntry:
    with transaction.atomic():
        return budget_debit_training(
            dataset=world.a.dataset,
            organisation=world.b.organisation,
            payer=world.b.admin,
            job_uid=uuid.uuid4(),
            plan=PLAN,
            epsilon=1.0,
            delta=DELTA,
        )


def _approx(world, *, total: float, delta_total: float = DELTA, allocation: float | None = None) -> None:
    budget_set(
        actor=world.a.steward, dataset=world.a.dataset, measure="approx", total=total, delta_total=delta_total
    )
    allocation_set(
        actor=world.a.steward,
        dataset=world.a.dataset,
        organisation=world.b.organisation,
        amount=total if allocation is None else allocation,
        delta_amount=delta_total / 2,
    )


def _budget(world) -> PrivacyBudget:
    return PrivacyBudget.objects.get(dataset=world.a.dataset)


def test_queries_and_a_training_compose_below_their_sum(world):
    _approx(world, total=10.0)
    events = []
    for _ in range(10):
        _release(world, 0.1)
        events.append(ApproxEvent(0.1))
    entry = _train(world)
    events.append(TRAINING)
    assert event_from_dict(entry.details["event"]) == TRAINING and entry.delta == 0.0
    assert entry.details["noise_multiplier"] == 1.2  # the plan is kept beside its event
    budget = _budget(world)
    expected = compose(events, DELTA)
    assert budget.spent == pytest.approx(expected.epsilon, rel=1e-6)
    assert budget.spent < 0.9 * expected.epsilon_naive  # composition beats the sum, by a margin
    amounts = list(LedgerEntry.objects.filter(budget=budget).order_by("pk").values_list("amount", flat=True))
    assert amounts == [0.1] * 10 + [1.0]  # each release's own cost: what the allocation pays
    allocation = BudgetAllocation.objects.get(budget=budget, organisation=world.b.organisation)
    assert allocation.spent == pytest.approx(math.fsum(amounts), rel=1e-12)
    # The composition from the records alone (another process, an empty cache) is the same ...
    ledger._COMPOSITIONS.clear()
    assert budget_composition(budget=budget).epsilon(DELTA) == pytest.approx(budget.spent, rel=1e-6)
    # ... and so is a process's copy from before other workers paid two more releases, caught up.
    behind = ledger._COMPOSITIONS[budget.pk]
    _release(world, 0.3)
    _release(world, 0.2)
    ledger._COMPOSITIONS[budget.pk] = behind
    caught_up = budget_composition(budget=_budget(world))
    assert len(caught_up.events) == 13 and caught_up.events[-2:] == (ApproxEvent(0.3), ApproxEvent(0.2))
    assert caught_up.epsilon(DELTA) == pytest.approx(_budget(world).spent, rel=1e-9)
    # A kept composition that does not match the records (a rolled-back entry, another database) is
    # not trusted: the ledger is composed again.
    ledger._COMPOSITIONS[budget.pk] = ((99, behind[0][1], 0.0), behind[1])
    assert len(budget_composition(budget=_budget(world)).events) == 13


def test_the_composed_total_decides_the_refusal(world):
    # 100 releases at ε = 0.05 sum to 5; composed at δ = 1e-5 they cost far less. Set the total
    # between the two: every one of them is paid, which a ledger adding ε's would have refused.
    events = [ApproxEvent(0.05)] * 100
    composed = compose(events, DELTA).epsilon
    assert composed < 4.0
    total = (composed + 5.0) / 2
    _approx(world, total=total, allocation=100.0)
    for _ in range(100):
        _release(world, 0.05)
    budget = _budget(world)
    assert budget.spent == pytest.approx(composed, rel=1e-6) and budget.spent <= budget.total
    # A release that would take the composed ε past the total is refused, and nothing is spent.
    left = total - budget.spent
    entries = LedgerEntry.objects.count()
    with pytest.raises(BudgetExceeded, match="total budget") as refused:
        _release(world, left * 3)
    assert "composed with the dataset's other releases" in refused.value.message
    assert LedgerEntry.objects.count() == entries and _budget(world).spent == budget.spent
    # ... while one that fits is paid: the total is the composition with it.
    entry = _release(world, left / 4)
    assert entry.amount == left / 4
    assert _budget(world).spent == pytest.approx(
        compose([*events, ApproxEvent(left / 4)], DELTA).epsilon, rel=1e-6
    )


def test_allocations_and_caps_count_each_releases_own_cost(world):
    """Whatever was released before, a payer pays the same for the same release: its own ε."""
    _approx(world, total=10.0, allocation=0.55)
    budget_set(
        actor=world.a.steward,
        dataset=world.a.dataset,
        measure="approx",
        total=10.0,
        delta_total=DELTA,
        per_analyst_cap=0.45,
    )
    for _ in range(4):
        _release(world, 0.1)
    allocation = BudgetAllocation.objects.get(budget=_budget(world), organisation=world.b.organisation)
    assert allocation.spent == pytest.approx(0.4, rel=1e-12)
    assert _budget(world).spent < 0.4  # the dataset's total composes
    with pytest.raises(BudgetExceeded, match="personal cap"):
        _release(world, 0.1)  # 0.5 > 0.45
    with pytest.raises(BudgetExceeded, match="allocation"):
        _release(world, 0.2)  # 0.6 > 0.55


def test_key_release_delta_is_spent_outright(world):
    _approx(world, total=10.0, delta_total=1e-5)
    _release(world, 0.5, delta=4e-6)
    budget = _budget(world)
    assert budget.delta_spent == pytest.approx(4e-6)
    assert budget.spent == pytest.approx(LedgerComposition([ApproxEvent(0.5, 4e-6)]).epsilon(1e-5), rel=1e-9)
    with pytest.raises(BudgetExceeded) as refused:  # the organisation's δ (5e-6) is nearly gone
        _release(world, 0.5, delta=2e-6)
    assert refused.value.code == "delta_exceeded"


def test_a_new_delta_restates_the_composed_total(world):
    _approx(world, total=1.5, delta_total=1e-5)
    _train(world)
    for _ in range(5):
        _release(world, 0.1)
    events = [TRAINING, *[ApproxEvent(0.1)] * 5]
    budget_set(actor=world.a.steward, dataset=world.a.dataset, measure="approx", total=1.5, delta_total=1e-7)
    assert _budget(world).spent == pytest.approx(compose(events, 1e-7).epsilon, rel=1e-6)
    assert _budget(world).spent > compose(events, 1e-5).epsilon  # a smaller δ states a larger ε
    with pytest.raises(Conflict) as refused:  # at δ = 1e-12 the same releases cost ε ≈ 1.8 > 1.5
        budget_set(
            actor=world.a.steward, dataset=world.a.dataset, measure="approx", total=1.5, delta_total=1e-12
        )
    assert refused.value.code == "below_spent" and "delta_total" in refused.value.fields


def test_pure_budgets_still_add(world):
    budget_set(actor=world.a.steward, dataset=world.a.dataset, measure="pure", total=5.0)
    allocation_set(
        actor=world.a.steward, dataset=world.a.dataset, organisation=world.b.organisation, amount=5
    )
    for _ in range(10):
        with transaction.atomic():
            budget_debit(query=_query(world, 0.1), amount=0.1)
    assert _budget(world).spent == pytest.approx(1.0, rel=1e-12)
    steward = api_client(world.a.steward)
    body = steward.get(f"/api/v1/datasets/org-a/{world.a.dataset.slug}/budget").json()
    assert body["composition"] is None
    # Its entries record no privacy event (ε adds; nothing composes), and the listing says so.
    assert not LedgerEntry.objects.filter(details__has_key="event").exists()
    listed = steward.get(f"/api/v1/datasets/org-a/{world.a.dataset.slug}/budget/ledger").json()
    assert listed["count"] == 10 and all(row["event"] is None for row in listed["results"])


def test_the_api_and_the_page_show_every_event_and_the_composed_total(world):
    _approx(world, total=10.0)
    for _ in range(3):
        _release(world, 0.2)
    _train(world)
    base = f"/api/v1/datasets/org-a/{world.a.dataset.slug}/budget"
    steward = api_client(world.a.steward)
    body = steward.get(base).json()
    composition = body["composition"]
    assert composition["events"] == 4 and composition["delta"] == DELTA
    assert composition["epsilon"] == pytest.approx(body["spent"], rel=1e-9)
    assert composition["epsilon"] < composition["epsilon_naive"]
    assert composition["accountant"] in ("pld", "rdp", "naive")
    listed = steward.get(f"{base}/ledger").json()
    assert listed["count"] == 4
    kinds = [(row["kind"], row["event"]["type"]) for row in listed["results"]]
    assert kinds == [("query", "approx")] * 3 + [("training", "subsampled_gaussian")]
    assert listed["results"][0]["event"] == {"type": "approx", "epsilon": 0.2, "delta": 0.0}
    assert [row["amount"] for row in listed["results"]] == [0.2, 0.2, 0.2, 1.0]
    assert body["spent"] < math.fsum(row["amount"] for row in listed["results"])
    # A grantee reads only what is left to it, and not the ledger.
    grantee = api_client(world.b.analyst)
    assert grantee.get(f"{base}/ledger").status_code == 404
    assert "composition" not in grantee.get(base).json()
    # The budget page states the composition.
    from django.test import Client

    page = Client()
    page.force_login(world.a.steward)
    html = page.get(f"/datasets/org-a/{world.a.dataset.slug}/budget/").content.decode()
    assert 'data-testid="composition"' in html and "4 privacy events" in html
