"""The queries of one request are debited together (`_debit_all` → `budget_debit_many`): one lock and
one write of the budget and the allocation, one INSERT of the ledger entries and of the audit events.
What it pays and refuses, the sums, the audit events and their chain must be exactly what debiting
the queries one after the other (`budget_debit`, the one rule) gives."""

from __future__ import annotations

import uuid
from functools import partial

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.audit.models import AuditEvent
from clearinghouse.audit.selectors import audit_chain_problems
from clearinghouse.audit.services import audit_lock
from clearinghouse.core.db import atomic_with_retry
from clearinghouse.queries import services
from clearinghouse.queries.ledger import allocation_set, budget_set
from clearinghouse.queries.models import BudgetAllocation, LedgerEntry, PrivacyBudget, Query, QueryStatus


def _query(world) -> Query:
    dataset = world.a.dataset
    analyst = world.b.analyst
    return Query.objects.create(
        dataset=dataset,
        version=dataset.versions.get(number=1),
        organisation=analyst.membership.organisation,
        analyst=analyst,
        spec={"q": uuid.uuid4().hex},
        query_hash=uuid.uuid4().hex,
        cost=0.0,
    )


def _setup(world, *, measure="pure", total=1.0, allocation=1.0, delta_total=0.0, delta_amount=0.0, **extra):
    budget_set(
        actor=world.a.steward,
        dataset=world.a.dataset,
        measure=measure,
        total=total,
        delta_total=delta_total,
        **extra,
    )
    allocation_set(
        actor=world.a.steward,
        dataset=world.a.dataset,
        organisation=world.b.organisation,
        amount=allocation,
        delta_amount=delta_amount,
    )


def _items(world, costs, measure) -> list[services._Priced]:
    """Pending queries, read as the worker reads them, priced at `costs` ((amount, delta) each)."""
    ids = [_query(world).pk for _ in costs]
    queries = Query.objects.select_related(
        "version__dataset", "dataset__organisation", "analyst", "organisation"
    ).filter(pk__in=ids)
    by_id = {query.pk: query for query in queries}
    return [
        services._Priced(by_id[pk], seen=QueryStatus.PENDING, measure=measure, amount=amount, delta=delta)
        for pk, (amount, delta) in zip(ids, costs, strict=True)
    ]


def _sequential(items):
    """The reference: each query debited alone through `budget_debit`, as before the batch."""
    audit_lock(*services._audit_streams(items))
    return services._debit_one_by_one(items)


def _outcome(world, costs, *, measure="pure", batch: bool, unreadable: frozenset[int] = frozenset()) -> dict:
    """Debits queries of `costs` in a savepoint that is rolled back, and says what happened, with
    the queries named by their index (ids differ between runs)."""
    with transaction.atomic():
        items = _items(world, costs, measure)
        for index in unreadable:  # its data could not be loaded: failed, nothing spent
            items[index].failure = ("release_failed", services._RELEASE_FAILED_MESSAGE)
        index = {item.query.pk: i for i, item in enumerate(items)}
        first_event = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
        with transaction.atomic():
            if batch:
                paid = services._debit(items)
            elif unreadable:  # the one-by-one path also fails the unreadable ones in their place
                paid = services._debit_all(items, one_by_one=True)
            else:
                paid = _sequential(items)
        queries = Query.objects.filter(pk__in=index).order_by("pk")
        # The worker's objects say what the database says (the worker answers from them).
        stored = {q.pk: (q.status, q.cost) for q in queries}
        assert [(item.query.status, item.query.cost) for item in items] == [
            stored[item.query.pk] for item in items
        ]
        budget = PrivacyBudget.objects.get(dataset=world.a.dataset)
        allocation = BudgetAllocation.objects.get(budget=budget, organisation=world.b.organisation)
        events = []
        for event in AuditEvent.objects.filter(seq__gt=first_event).order_by("seq"):
            extra = dict(event.extra)
            if "query" in extra:
                extra["query"] = index[extra["query"]]
                extra.pop("query_hash")  # random, per query (checked against the query below)
            query_index = index[int(event.target_id)] if event.target_type == "queries.query" else None
            events.append((event.action, event.stream, event.target_type, query_index, extra))
        summary = {
            "paid": [index[item.query.pk] for item in paid],
            "queries": [
                (q.status, q.cost if q.status == "running" else None, q.error_code, q.error_message)
                for q in queries
            ],
            "entries": [
                (index[query_id], amount, delta, details)
                for query_id, amount, delta, details in LedgerEntry.objects.filter(query_id__in=index)
                .order_by("pk")
                .values_list("query_id", "amount", "delta", "details")
            ],
            "budget": (budget.spent, budget.delta_spent),
            "allocation": (allocation.spent, allocation.delta_spent),
            "events": events,
            "chain": list(audit_chain_problems()),
        }
        transaction.set_rollback(True)
    return summary


def test_the_second_does_not_fit_the_third_does_as_one_after_the_other(world):
    _setup(world, total=1.0, allocation=1.0)
    costs = [(0.5, 0.0), (0.6, 0.0), (0.3, 0.0)]
    batch = _outcome(world, costs, batch=True)
    assert batch == _outcome(world, costs, batch=False)
    assert batch["paid"] == [0, 2]
    assert [q[0] for q in batch["queries"]] == ["running", "refused", "running"]
    assert batch["queries"][1][2:] == (
        "budget_exceeded",
        "This query costs ε=0.6; your organisation's allocation has ε=0.5 left.",
    )
    assert [(i, amount) for i, amount, _, _ in batch["entries"]] == [(0, 0.5), (2, 0.3)]
    assert batch["budget"] == (0.8, 0.0) and batch["allocation"] == (0.8, 0.0)
    actions = [(action, query, extra.get("spent")) for action, _, _, query, extra in batch["events"]]
    assert actions == [
        ("budget.debited", None, 0.5),
        ("query.refused", 1, None),
        ("budget.debited", None, 0.8),
    ]
    assert [extra["query"] for action, *_, extra in batch["events"] if action == "budget.debited"] == [0, 2]
    assert batch["chain"] == []


def test_caps_and_delta_in_a_batch_refuse_as_one_after_the_other(world):
    _setup(
        world,
        total=10.0,
        allocation=10.0,
        per_query_max=2.0,
        per_analyst_cap=1.0,
        measure="pure",
    )
    costs = [(0.6, 0.0), (2.5, 0.0), (0.5, 0.0), (0.4, 0.0), (0.1, 0.0)]
    batch = _outcome(world, costs, batch=True)
    assert batch == _outcome(world, costs, batch=False)
    assert batch["paid"] == [0, 3]
    codes = [q[2] for q in batch["queries"]]
    assert codes == ["", "above_per_query_max", "budget_exceeded", "", "budget_exceeded"]
    assert "your personal cap has ε=0.4 left" in batch["queries"][2][3]


def test_a_query_refused_before_pricing_keeps_its_place_among_the_debits(world):
    _setup(world, total=1.0, allocation=1.0)
    with transaction.atomic():
        items = _items(world, [(0.2, 0.0), (0.0, 0.0), (0.3, 0.0)], "pure")
        items[1].refusal = ("invalid_privacy_loss", services.UNPRICEABLE_MESSAGE)
        paid = services._debit_all(items)
        assert [item.query.pk for item in paid] == [items[0].query.pk, items[2].query.pk]
        events = AuditEvent.objects.order_by("-seq")[:3]
        assert [(e.action, e.extra.get("spent")) for e in reversed(events)] == [
            ("budget.debited", 0.2),
            ("query.refused", None),
            ("budget.debited", 0.5),
        ]
        assert list(audit_chain_problems()) == []


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    costs=st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=1.5, allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, 0.0, 1e-7, 4e-6]),
        ),
        min_size=2,
        max_size=5,
    ),
    total=st.floats(min_value=0.5, max_value=3.0),
)
def test_an_approximate_dp_batch_composes_as_the_debits_one_after_the_other(world, costs, total):
    with transaction.atomic():
        _setup(
            world,
            measure="approx",
            total=total,
            allocation=total,
            delta_total=1e-5,
            delta_amount=8e-6,
        )
        batch = _outcome(world, costs, measure="approx", batch=True)
        sequential = _outcome(world, costs, measure="approx", batch=False)
        transaction.set_rollback(True)
    assert batch == sequential
    assert batch["chain"] == []
    # The composed spent is below the naive sum of what was paid (and equal to the last event's).
    paid = [amount for _, amount, _, _ in batch["entries"]]
    assert batch["budget"][0] <= sum(paid) * (1 + 1e-9) + 1e-12
    debited = [extra["spent"] for action, *_, extra in batch["events"] if action == "budget.debited"]
    assert debited == sorted(debited) and (not debited or debited[-1] == batch["budget"][0])


# The SQL of one 3-query request on the worker's side, debit and store (PostgreSQL; with
# AUDIT_STRICT_LOCK_ORDER the tests also read the transaction id once per audit lock or record
# call). Before batching: 51 and 26; 20 and 12 before `audit_lock` took several heads in one statement;
# 19 and 11 before the batches lost their savepoints and the debit its second lock of a head; 15 and 9
# before the audit events' INSERT moved their head in the same statement. Raise these only with a reason.
DEBIT_STATEMENTS = 14
STORE_STATEMENTS = 8


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the statements of PostgreSQL's path")
def test_the_statements_of_a_three_query_request_are_pinned(world):
    _setup(world, total=5.0, allocation=5.0)
    items = _items(world, [(0.1, 0.0), (0.2, 0.0), (0.3, 0.0)], "pure")
    with CaptureQueriesContext(connection) as debit:
        paid = atomic_with_retry(partial(services._debit_all, items))
    assert len(paid) == 3
    released = [(item, {"answer": index}) for index, item in enumerate(paid)]
    with CaptureQueriesContext(connection) as store:
        atomic_with_retry(partial(services._store_all, released))
    statuses = set(
        Query.objects.filter(pk__in=[item.query.pk for item in items]).values_list("status", flat=True)
    )
    assert statuses == {QueryStatus.RELEASED}
    assert LedgerEntry.objects.filter(query__in=[item.query for item in items]).count() == 3
    assert list(audit_chain_problems()) == []
    sqls = "\n".join(q["sql"][:120] for q in debit.captured_queries)
    assert len(debit.captured_queries) == DEBIT_STATEMENTS, sqls
    sqls = "\n".join(q["sql"][:120] for q in store.captured_queries)
    assert len(store.captured_queries) == STORE_STATEMENTS, sqls


def test_answers_another_worker_stored_meanwhile_are_not_stored_twice(world):
    _setup(world, total=5.0, allocation=5.0)
    items = _items(world, [(0.1, 0.0), (0.2, 0.0), (0.3, 0.0)], "pure")
    paid = atomic_with_retry(partial(services._debit_all, items))
    first = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    # Another worker released the second one just before this one stores its answers.
    Query.objects.filter(pk=paid[1].query.pk).update(status=QueryStatus.RELEASED, result={"theirs": 1})
    released = [(item, {"answer": index}) for index, item in enumerate(paid)]
    services._store(released)
    results = dict(Query.objects.filter(pk__in=[i.query.pk for i in paid]).values_list("pk", "result"))
    assert [results[item.query.pk] for item in paid] == [{"answer": 0}, {"theirs": 1}, {"answer": 2}]
    events = AuditEvent.objects.filter(seq__gt=first).order_by("seq")
    assert [(e.action, int(e.target_id)) for e in events] == [
        ("query.released", paid[0].query.pk),
        ("query.released", paid[2].query.pk),
    ]
    assert paid[1].query.status == QueryStatus.RUNNING  # as this worker last saw it
    assert list(audit_chain_problems()) == []


@pytest.mark.parametrize("measure", ["pure", "zcdp"])
def test_a_batch_on_an_exhausted_budget_spends_nothing_and_records_each_refusal(world, measure):
    _setup(world, measure=measure, total=0.1, allocation=0.1)
    costs = [(0.2, 0.0), (0.3, 0.0)]
    batch = _outcome(world, costs, measure=measure, batch=True)
    assert batch == _outcome(world, costs, measure=measure, batch=False)
    assert batch["paid"] == [] and batch["entries"] == [] and batch["budget"] == (0.0, 0.0)
    assert [e[0] for e in batch["events"]] == ["query.refused", "query.refused"]


def test_a_batch_the_database_refuses_is_debited_one_by_one_with_the_same_outcome(world, monkeypatch):
    _setup(world, total=1.0, allocation=1.0)
    costs = [(0.5, 0.0), (0.6, 0.0), (0.3, 0.0)]
    expected = _outcome(world, costs, batch=False)

    def refused(**_):
        raise DatabaseError("the batch statement failed")

    monkeypatch.setattr(services, "budget_debit_many", refused)
    assert _outcome(world, costs, batch=True) == expected


@pytest.mark.skipif(connection.vendor != "postgresql", reason="an error that aborts the transaction")
def test_a_batch_refused_after_another_was_paid_is_run_again_whole_one_by_one(world, monkeypatch):
    """The batches have no savepoints: the second one failing rolls back the whole transaction (the
    first batch's debit and the failure recorded between them too), which then runs one by one."""
    _setup(world, total=1.0, allocation=1.0)
    costs = [(0.5, 0.0), (0.2, 0.0), (0.3, 0.0), (0.4, 0.0)]
    expected = _outcome(world, costs, batch=False, unreadable=frozenset({1}))
    assert expected["paid"] == [0, 2] and expected["queries"][1][0] == "failed"
    real = services.budget_debit_many
    calls = []

    def second_refused(**kwargs):
        calls.append(len(kwargs["queries"]))
        if len(calls) == 2:  # a statement PostgreSQL refuses: the transaction can go no further
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")
        return real(**kwargs)

    monkeypatch.setattr(services, "budget_debit_many", second_refused)
    assert _outcome(world, costs, batch=True, unreadable=frozenset({1})) == expected
    assert calls == [1, 2]  # the batch before the failed query, then the one after it


@pytest.mark.skipif(connection.vendor != "postgresql", reason="an error that aborts the transaction")
def test_answers_the_database_refuses_together_are_stored_one_by_one(world, monkeypatch):
    _setup(world, total=5.0, allocation=5.0)
    items = _items(world, [(0.1, 0.0), (0.2, 0.0)], "pure")
    paid = atomic_with_retry(partial(services._debit_all, items))
    first = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    real = services.audit_record_many
    calls = []

    def fails_once(events):
        calls.append(len(events))
        if len(calls) == 1:  # a statement PostgreSQL refuses: the transaction can go no further
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")
        return real(events)

    monkeypatch.setattr(services, "audit_record_many", fails_once)
    services._store([(item, {"answer": i}) for i, item in enumerate(paid)])
    assert calls == [2]  # the batch was tried once; then each answer alone (audit_record)
    results = dict(Query.objects.filter(pk__in=[i.query.pk for i in paid]).values_list("pk", "result"))
    assert [results[item.query.pk] for item in paid] == [{"answer": 0}, {"answer": 1}]
    events = AuditEvent.objects.filter(seq__gt=first).order_by("seq")
    assert [(e.action, int(e.target_id)) for e in events] == [
        ("query.released", item.query.pk) for item in paid
    ]
    assert list(audit_chain_problems()) == []
