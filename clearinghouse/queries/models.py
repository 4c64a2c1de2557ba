"""The privacy-budget ledger.

A dataset's owner sets a total budget in the dataset's privacy measure (ε under pure DP, ρ under
zero-concentrated DP) and allocates shares of it to organisations. Every release debits the ledger
in one transaction that locks the budget row first and the allocation row second, so concurrent
releases are serialised per dataset and the sums can never pass their limits. Under pure DP and zCDP
composition is sequential: spent = the sum of the entries. An approximate-DP budget composes its
entries' privacy events with the accountant (`ledger.budget_composition`): spent = the composed ε at
the budget's δ, and each entry's amount is its raise of it (so the entries still add up to spent).
A federated job's DP-SGD training on the dataset is a ledger entry too (kind `training`), paid from
the same budget when the job is scheduled.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from clearinghouse.datasets.models import Dataset, DatasetVersion
from clearinghouse.organisations.models import Organisation


class PrivacyMeasure(models.TextChoices):
    PURE = "pure", "Pure DP (ε)"
    APPROX = "approx", "Approximate DP (ε, δ)"
    ZCDP = "zcdp", "Zero-concentrated DP (ρ)"


class TrainingPolicy(models.TextChoices):
    """Whether a dataset's rows may train a federated model, and how that is paid for."""

    FORBIDDEN = "forbidden", "No federated training"
    DP = "dp", "Only with DP-SGD, paid from this budget"
    ANY = "any", "Also without DP: such a model carries no guarantee"


class PrivacyBudget(models.Model):
    dataset = models.OneToOneField(Dataset, on_delete=models.CASCADE, related_name="privacy_budget")
    measure = models.CharField(max_length=8, choices=PrivacyMeasure.choices, default=PrivacyMeasure.PURE)
    total = models.FloatField(help_text="ε (pure) or ρ (zCDP) for the dataset's whole life.")
    spent = models.FloatField(default=0.0)
    # δ is spent only by releases that need it (e.g. group keys not public); 0 forbids them.
    delta_total = models.FloatField(default=0.0)
    delta_spent = models.FloatField(default=0.0)
    per_query_max = models.FloatField(null=True, blank=True)
    per_analyst_cap = models.FloatField(null=True, blank=True)
    # A public upper bound on the row count (OpenDP's max_length), stated by the steward from public
    # knowledge; never the true count (ledger.budget_set checks it holds for every ready version).
    max_rows = models.PositiveBigIntegerField(default=10_000_000)
    # Federated training on the dataset (through its owner's or a grantee's training grant): DP-SGD
    # priced in (ε, δ) and debited at schedule (`ledger.budget_debit_training`), or not at all.
    training = models.CharField(max_length=16, choices=TrainingPolicy.choices, default=TrainingPolicy.DP)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(total__gt=0), name="budget_total_positive"),
            models.CheckConstraint(
                condition=Q(spent__gte=0) & Q(spent__lte=F("total") * 1.000000001),
                name="budget_spent_within_total",
            ),
            models.CheckConstraint(
                condition=Q(delta_total__gte=0) & Q(delta_total__lt=1), name="budget_delta_range"
            ),
            models.CheckConstraint(
                condition=Q(delta_spent__lte=F("delta_total") * 1.000000001), name="budget_delta_within_total"
            ),
            # OpenDP's max_length is a u32.
            models.CheckConstraint(
                condition=Q(max_rows__gte=1) & Q(max_rows__lte=2**32 - 1), name="budget_max_rows_range"
            ),
            models.CheckConstraint(
                condition=Q(training__in=TrainingPolicy.values), name="budget_training_policy_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.measure} budget of dataset {self.dataset_id}"


class BudgetAllocation(models.Model):
    budget = models.ForeignKey(PrivacyBudget, on_delete=models.CASCADE, related_name="allocations")
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="budget_allocations"
    )
    amount = models.FloatField()
    spent = models.FloatField(default=0.0)
    delta_amount = models.FloatField(default=0.0)
    delta_spent = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "organisation"], name="one_allocation_per_org"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="allocation_amount_nonnegative"),
            models.CheckConstraint(
                condition=Q(spent__lte=F("amount") * 1.000000001), name="allocation_spent_within"
            ),
            models.CheckConstraint(
                condition=Q(delta_spent__lte=F("delta_amount") * 1.000000001), name="allocation_delta_within"
            ),
        ]

    def __str__(self) -> str:
        return f"allocation of budget {self.budget_id} to organisation {self.organisation_id}"


class QueryStatus(models.TextChoices):
    """pending → running (paid) → released | failed; pending → refused. Every query ends released,
    refused (nothing spent: the budget, the privacy loss or the query itself said no) or failed (the
    service could not answer; `cost` says whether it had been paid), never stuck: a sweeper recovers
    what a dead worker left (see `query_recover_stuck`)."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    RELEASED = "released", "Released"
    REFUSED = "refused", "Refused"
    FAILED = "failed", "Failed"


QUERY_UNFINISHED = (QueryStatus.PENDING, QueryStatus.RUNNING)
QUERY_FINISHED = (QueryStatus.RELEASED, QueryStatus.REFUSED, QueryStatus.FAILED)
# A query in one of these answers later identical ones (pending/running: it is still on its way).
QUERY_LIVE = (QueryStatus.PENDING, QueryStatus.RUNNING, QueryStatus.RELEASED)


class Query(models.Model):
    """One release request. A released query answers later identical requests of the same
    organisation (same canonical spec, version and privacy parameters) without new spending."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="queries")
    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="queries")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="queries")
    analyst = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="queries")
    spec = models.JSONField(help_text="Canonical query spec.")
    sql = models.TextField(blank=True)
    query_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=QueryStatus.choices, default=QueryStatus.PENDING)
    cost = models.FloatField(help_text="Debited ε or ρ (exact, from the measurement's privacy map).")
    cost_delta = models.FloatField(default=0.0)
    privacy = models.JSONField(default=dict, help_text="The privacy loss asked for.")
    task_id = models.CharField(max_length=64, blank=True)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Last change of state or hand-over to a worker: the sweeper recovers queries idle for too long.
    updated_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Recoveries after a lost worker.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organisation", "version", "query_hash"]),
            models.Index(
                fields=["status", "updated_at"],
                condition=Q(status__in=["pending", "running"]),
                name="query_unfinished_idx",
            ),
        ]
        constraints = [
            # At most one paid release per organisation, version and canonical query: replay reads it.
            models.UniqueConstraint(
                fields=["organisation", "version", "query_hash"],
                condition=Q(status__in=["pending", "running", "released"]),
                name="one_release_per_query",
            ),
        ]

    def __str__(self) -> str:
        return f"query {self.pk} ({self.status})"


class LedgerKind(models.TextChoices):
    QUERY = "query", "Query release"
    TRAINING = "training", "Federated training (DP-SGD)"


class LedgerEntry(models.Model):
    """One paid use of a dataset: a query's release, or a federated job's DP-SGD training on it
    (`job_uid` names the job: the queries app knows nothing of federation; `details` holds the
    priced DP-SGD plan)."""

    budget = models.ForeignKey(PrivacyBudget, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=16, choices=LedgerKind.choices, default=LedgerKind.QUERY)
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    analyst = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    query = models.OneToOneField(
        Query, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entry"
    )
    query_hash = models.CharField(max_length=64, blank=True)
    job_uid = models.UUIDField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    amount = models.FloatField()
    delta = models.FloatField(default=0.0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_amount_positive"),
            models.CheckConstraint(
                condition=(Q(kind="query") & Q(query__isnull=False) & Q(job_uid__isnull=True))
                | (Q(kind="training") & Q(query__isnull=True) & Q(job_uid__isnull=False)),
                name="ledger_entry_kind_matches",
            ),
            models.UniqueConstraint(
                fields=["budget", "job_uid"],
                condition=Q(kind="training"),
                name="one_training_entry_per_budget_and_job",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} ledger entry {self.pk} of budget {self.budget_id}"
