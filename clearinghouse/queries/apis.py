from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.accounts.authentication import request_membership
from clearinghouse.core.apis import ErrorSerializer, StrictCharField, paginated, validated
from clearinghouse.datasets.selectors import dataset_get
from clearinghouse.dp.accounting import EVENT_TYPES
from clearinghouse.organisations.selectors import organisation_directory_get

from .ledger import allocation_set, budget_set
from .models import QUERY_FINISHED, LedgerKind, PrivacyMeasure, QueryStatus, TrainingPolicy
from .selectors import (
    budget_ledger_entry_body,
    budget_ledger_rows,
    budget_left_for,
    budget_spending,
    budget_view_for,
    query_answer_visible,
    query_get,
    query_list,
)
from .services import (
    query_error_for,
    query_plan_prepare,
    query_plan_run,
    query_prepare,
    query_preview_run,
    query_submit,
    query_submit_many,
    query_wait_many,
)


class BudgetLeftSerializer(serializers.Serializer):
    """What the asking analyst may still spend (`ledger.Remaining`)."""

    class Meta:
        ref_name = "BudgetLeft"

    measure = serializers.ChoiceField(choices=PrivacyMeasure.choices)
    organisation = serializers.FloatField(help_text="Left of your organisation's allocation.")
    dataset = serializers.FloatField(help_text="Left of the dataset's total budget.")
    analyst = serializers.FloatField(allow_null=True, help_text="Left of your personal cap (null: no cap).")
    delta_organisation = serializers.FloatField()
    per_query_max = serializers.FloatField(allow_null=True)
    organisation_allocated = serializers.FloatField(help_text="Your organisation's allocation.")
    organisation_spent = serializers.FloatField(help_text="What your organisation has spent of it.")


class BudgetAllocationOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "BudgetAllocationOutput"

    organisation = serializers.CharField()
    amount = serializers.FloatField()
    spent = serializers.FloatField()
    left = serializers.FloatField(help_text="The allocation less what the organisation spent.")
    delta_amount = serializers.FloatField()
    delta_spent = serializers.FloatField()


class BudgetDailyOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "BudgetDailyOutput"

    day = serializers.DateField()
    organisation = serializers.CharField()
    amount = serializers.FloatField()


class BudgetCompositionOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "BudgetCompositionOutput"

    events = serializers.IntegerField(help_text="Privacy events paid from the budget.")
    delta = serializers.FloatField(help_text="The budget's δ, at which they are composed.")
    epsilon = serializers.FloatField(allow_null=True, help_text="Their composed ε: `spent`.")
    accountant = serializers.CharField(
        allow_null=True, help_text="pld, naive or rdp: the bound `epsilon` is."
    )
    epsilon_pld = serializers.FloatField(allow_null=True, help_text="Privacy loss distributions.")
    epsilon_rdp = serializers.FloatField(allow_null=True, help_text="Rényi DP.")
    epsilon_naive = serializers.FloatField(allow_null=True, help_text="The sum of each event's own ε.")


class BudgetOutputSerializer(serializers.Serializer):
    """The owner's (and operators') view: `selectors.budget_spending`."""

    class Meta:
        ref_name = "BudgetOutput"

    measure = serializers.ChoiceField(choices=PrivacyMeasure.choices)
    total = serializers.FloatField()
    spent = serializers.FloatField()
    delta_total = serializers.FloatField()
    delta_spent = serializers.FloatField()
    per_query_max = serializers.FloatField(allow_null=True)
    per_analyst_cap = serializers.FloatField(allow_null=True)
    max_rows = serializers.IntegerField(
        help_text="The steward's stated public upper bound on the row count "
        "(stated, not measured: never the true count)."
    )
    training = serializers.ChoiceField(
        choices=TrainingPolicy.choices,
        help_text="Federated training on the dataset: forbidden, only with DP-SGD paid from this budget "
        "(dp), or also without DP (any: such a model carries no guarantee).",
    )
    composition = BudgetCompositionOutputSerializer(
        allow_null=True,
        help_text="An approximate-DP budget composes its releases and trainings with the accountant "
        "(`spent` is their composed ε at the budget's δ); null for pure-ε and ρ budgets, which add.",
    )
    allocations = BudgetAllocationOutputSerializer(many=True)
    daily = BudgetDailyOutputSerializer(many=True, help_text="Spending per day and organisation.")


class BudgetLeftOutputSerializer(serializers.Serializer):
    """A grantee's view: only what is left to the asking analyst."""

    class Meta:
        ref_name = "BudgetLeftOutput"

    left = BudgetLeftSerializer()


class BudgetApi(APIView):
    """GET: owners see the whole budget with spending per organisation and per day; others see what
    is left to them. PUT: the owner sets the budget (composition is sequential in `measure`)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "BudgetInput"

        measure = StrictCharField(max_length=16)
        total = serializers.FloatField()
        delta_total = serializers.FloatField(required=False, default=0.0)
        per_query_max = serializers.FloatField(required=False, allow_null=True, default=None)
        per_analyst_cap = serializers.FloatField(required=False, allow_null=True, default=None)
        max_rows = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            help_text="A public upper bound on the row count, stated from public knowledge (never measured); "
            "a tighter one means less noise on float sums. Omitted: unchanged.",
        )
        training = StrictCharField(
            max_length=16,
            required=False,
            allow_null=True,
            default=None,
            help_text="Federated training: 'forbidden', 'dp' (only with DP-SGD, paid from this budget; "
            "needs the approx measure) or 'any' (also without DP). Omitted: unchanged ('dp' for a new budget).",
        )

    @extend_schema(
        responses=PolymorphicProxySerializer(
            component_name="BudgetView",
            serializers=[BudgetOutputSerializer, BudgetLeftOutputSerializer],
            resource_type_field_name=None,
        ),
        operation_id="dataset_budget_get",
    )
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        return Response(budget_view_for(actor=request.user, dataset=dataset))

    @extend_schema(
        request=InputSerializer,
        responses=BudgetOutputSerializer,
        operation_id="dataset_budget_set",
        examples=[
            OpenApiExample(
                "Pure DP, ε = 10 in all", value={"measure": "pure", "total": 10.0}, request_only=True
            )
        ],
    )
    def put(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        budget_set(actor=request.user, dataset=dataset, **validated(self.InputSerializer, request.data))
        return Response(budget_spending(actor=request.user, dataset=dataset))


class PrivacyEventOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "PrivacyEventOutput"

    type = serializers.ChoiceField(
        choices=sorted(EVENT_TYPES),
        help_text="approx: an (ε, δ) release (a query); subsampled_gaussian: DP-SGD training.",
    )
    epsilon = serializers.FloatField(required=False)
    delta = serializers.FloatField(required=False)
    noise_multiplier = serializers.FloatField(required=False)
    sample_rate = serializers.FloatField(required=False)
    steps = serializers.IntegerField(required=False)


class BudgetLedgerEntryOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "BudgetLedgerEntryOutput"

    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=LedgerKind.choices)
    organisation = serializers.CharField()
    analyst = serializers.CharField()
    query = serializers.IntegerField(allow_null=True)
    job = serializers.UUIDField(allow_null=True)
    amount = serializers.FloatField(
        help_text="Its own cost, ε or ρ: what allocations and personal caps count (an approximate-DP "
        "budget's total composes the events instead)."
    )
    delta = serializers.FloatField(help_text="The δ it spent outright (a key release).")
    event = PrivacyEventOutputSerializer(
        allow_null=True,
        help_text="The privacy event the ledger composed (approximate-DP budgets; else null).",
    )
    created_at = serializers.DateTimeField()


class BudgetLedgerApi(APIView):
    """GET: every paid use of the dataset, oldest first (the order the ledger composed them), with its
    privacy event; those who oversee the dataset (its owner organisation and operators) only."""

    @extend_schema(
        responses=BudgetLedgerEntryOutputSerializer(many=True), operation_id="dataset_budget_ledger"
    )
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        return paginated(
            queryset=budget_ledger_rows(actor=request.user, dataset=dataset),
            request=request,
            view=self,
            body=budget_ledger_entry_body,
        )


class AllocationApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AllocationInput"

        amount = serializers.FloatField()
        delta_amount = serializers.FloatField(required=False, default=0.0)

    @extend_schema(
        request=InputSerializer,
        responses=BudgetOutputSerializer,
        operation_id="dataset_budget_allocate",
        examples=[OpenApiExample("ε = 2 to the organisation", value={"amount": 2.0}, request_only=True)],
    )
    def put(self, request, organisation: str, slug: str, grantee: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        allocation_set(
            actor=request.user,
            dataset=dataset,
            organisation=organisation_directory_get(slug=grantee),
            **validated(self.InputSerializer, request.data),
        )
        return Response(budget_spending(actor=request.user, dataset=dataset))


class QueryInputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryInput"

    spec = serializers.JSONField(required=False, default=None, help_text="A query spec (JSON).")
    sql = StrictCharField(
        required=False,
        default=None,
        max_length=20_000,
        help_text="Or SQL in the supported subset, with `privacy`.",
    )
    privacy = serializers.JSONField(required=False, default=None, help_text='e.g. {"epsilon": 1.0}')


class QueryBatchInputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryBatchInput"

    queries = QueryInputSerializer(many=True, help_text="Several queries released in one request.")


class PrivacyCostSerializer(serializers.Serializer):
    class Meta:
        ref_name = "PrivacyCost"

    measure = serializers.ChoiceField(choices=PrivacyMeasure.choices)
    epsilon = serializers.FloatField(allow_null=True)
    delta = serializers.FloatField()
    rho = serializers.FloatField(allow_null=True)


class NoiseComponentSerializer(serializers.Serializer):
    class Meta:
        ref_name = "NoiseComponent"

    role = serializers.CharField(help_text="count, sum or quantile")
    mechanism = serializers.CharField()
    scale = serializers.FloatField()
    half_width = serializers.FloatField(allow_null=True)
    confidence = serializers.FloatField(allow_null=True)


class AggregatePreviewSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AggregatePreview"

    name = serializers.CharField()
    type = serializers.CharField()
    column = serializers.CharField(allow_null=True)
    q = serializers.FloatField(allow_null=True)
    mechanism = serializers.CharField()
    scale = serializers.FloatField(allow_null=True)
    half_width_95 = serializers.FloatField(allow_null=True)
    components = NoiseComponentSerializer(many=True)
    note = serializers.CharField()
    candidates = serializers.IntegerField(allow_null=True)


class QueryResultSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryResult"

    columns = serializers.ListField(child=serializers.CharField())
    rows = serializers.ListField(
        child=serializers.DictField(), help_text="Group keys and one noisy value per aggregate."
    )
    intervals = serializers.ListField(
        child=serializers.DictField(child=serializers.ListField(child=serializers.FloatField())),
        help_text="Per row: aggregate name → 95% interval.",
    )
    aggregates = AggregatePreviewSerializer(many=True)
    group_by = serializers.ListField(child=serializers.CharField())
    cost = PrivacyCostSerializer()


class QueryCostSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryCost"

    amount = serializers.FloatField(help_text="Debited ε or ρ.")
    delta = serializers.FloatField()


class QueryErrorSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryError"

    code = serializers.CharField()
    detail = serializers.CharField()


class QueryOutputSerializer(serializers.Serializer):
    """`query_body`: a release request and, once released, its answer."""

    class Meta:
        ref_name = "QueryOutput"

    id = serializers.IntegerField()
    url = serializers.CharField()
    status = serializers.ChoiceField(choices=QueryStatus.choices)
    dataset = serializers.CharField(help_text="owner/slug")
    version = serializers.IntegerField()
    query_hash = serializers.CharField()
    spec = serializers.JSONField(help_text="The canonical query spec.")
    sql = serializers.CharField(allow_null=True)
    cost = QueryCostSerializer()
    replayed = serializers.BooleanField(help_text="An identical earlier query answered, at no new cost.")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    result = QueryResultSerializer(
        required=False,
        help_text="Only when released, and only for the asking organisation and the dataset's owner.",
    )
    error = QueryErrorSerializer(required=False, help_text="Only when refused or failed (lists and batches).")


class QueryBatchOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryBatchOutput"

    results = QueryOutputSerializer(many=True, help_text="The queries of the request, in order.")


class PreviewWarningSerializer(serializers.Serializer):
    """Something to know before spending (`dp.planner.preview_warnings`)."""

    class Meta:
        ref_name = "PreviewWarning"

    code = serializers.CharField(
        help_text="Stable: `interval_covers_range` (a 95% interval would cover at least half of the "
        "aggregate's public range, from the stated row bound and the column's bounds) or "
        "`group_too_small_for_mean` (smaller groups get a mean interval wider than half the column's range)."
    )
    aggregate = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField(help_text="e.g. `min_group_size`, `half_width_95`, `public_range`.")


class PlannedPreviewSerializer(serializers.Serializer):
    """A preview (mechanisms, 95% half-widths, exact cost) and its warnings; spends nothing."""

    class Meta:
        ref_name = "PlannedPreview"

    spec_hash = serializers.CharField()
    schema_fingerprint = serializers.CharField()
    cost = PrivacyCostSerializer(help_text="The exact cost a release would be debited.")
    aggregates = AggregatePreviewSerializer(many=True)
    group_by = serializers.ListField(child=serializers.CharField())
    public_groups = serializers.IntegerField(allow_null=True)
    threshold = serializers.IntegerField(allow_null=True)
    warnings = PreviewWarningSerializer(many=True, help_text="Read them before spending.")


class QueryPreviewOutputSerializer(PlannedPreviewSerializer):
    """What a query would cost and how noisy it would be, with the warnings to read before spending,
    the dataset version it was priced on and what is left to the asking analyst."""

    class Meta:
        ref_name = "QueryPreviewOutput"

    version = serializers.IntegerField()
    left = BudgetLeftSerializer()


class QueryReleaseInputSerializer(QueryInputSerializer):
    """Documents the release body: one query, or several as `queries` (then the other fields are not read)."""

    class Meta:
        ref_name = "QueryReleaseInput"

    queries = QueryInputSerializer(
        many=True, required=False, help_text="Several queries released in one request."
    )


_COUNT_SPEC = {"spec": {"aggregates": [{"type": "count"}], "privacy": {"epsilon": 0.5}}}
QUERY_EXAMPLES = [
    OpenApiExample("A count as a spec", value=_COUNT_SPEC, request_only=True),
    OpenApiExample(
        "SQL",
        value={
            "sql": "SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ",
            "privacy": {"epsilon": 1.0},
        },
        request_only=True,
    ),
]


def _wait_seconds(request) -> float:
    try:
        asked = float(request.query_params.get("wait", settings.QUERY_WAIT_SECONDS))
    except ValueError:
        asked = settings.QUERY_WAIT_SECONDS
    return max(0.0, min(asked, settings.QUERY_WAIT_SECONDS))


def query_body(query, *, replayed: bool = False, answer: bool = True) -> dict:
    """`answer`: whether the viewer may read the released values (`selectors.query_answer_visible`)."""
    body = {
        "id": query.pk,
        "url": reverse("api:query", args=[query.pk]),
        "status": query.status,
        "dataset": f"{query.dataset.organisation.slug}/{query.dataset.slug}",
        "version": query.version.number,
        "query_hash": query.query_hash,
        "spec": query.spec,
        "sql": query.sql or None,
        "cost": {"amount": query.cost, "delta": query.cost_delta},
        "replayed": replayed,
        "created_at": query.created_at,
        "finished_at": query.finished_at,
    }
    if query.status == "released" and answer:
        body["result"] = {
            k: query.result[k] for k in ("columns", "rows", "intervals", "aggregates", "group_by", "cost")
        }
    return body


class QueryPreviewApi(APIView):
    @extend_schema(
        request=QueryInputSerializer,
        operation_id="queries_preview",
        examples=QUERY_EXAMPLES,
        responses={200: QueryPreviewOutputSerializer, 400: ErrorSerializer},
    )
    def post(self, request, organisation: str, slug: str):
        # The analyst's membership once, for every check of this request (`membership_given`).
        membership = request_membership(request)
        dataset = dataset_get(
            actor=request.user, organisation_slug=organisation, dataset_slug=slug, membership=membership
        )
        data = validated(QueryInputSerializer, request.data)
        version, budget, spec = query_prepare(
            actor=request.user, dataset=dataset, membership=membership, **data
        )
        preview = query_preview_run(version=version, budget=budget, spec=spec)
        left = budget_left_for(actor=request.user, dataset=dataset, budget=budget, membership=membership)
        return Response({**preview, "version": version.number, "left": asdict(left)})


class UnplannedAggregateSerializer(serializers.Serializer):
    class Meta:
        ref_name = "UnplannedAggregate"

    aggregate = serializers.CharField()
    type = serializers.CharField()
    reason = serializers.CharField()


class AccuracyCurvePointSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AccuracyCurvePoint"

    level = serializers.FloatField(help_text="ε, or ρ under a zCDP policy (see `measure`).")
    half_widths = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="Aggregate name → 95% half-width (null: a mean's depends on the data; a quantile has none).",
    )
    min_group_sizes = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Mean name → the least group size whose 95% interval is narrower than half the column's range.",
    )


class QueryPlanOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryPlanOutput"

    measure = serializers.CharField(help_text="What `level` is: `epsilon`, or `rho` under a zCDP policy.")
    target_half_width = serializers.FloatField(allow_null=True)
    level = serializers.FloatField(
        allow_null=True,
        help_text="The least ε (or ρ) at which every count and sum has a 95% half-width ≤ the target, "
        "checked with the real calibration (null without a target).",
    )
    preview = PlannedPreviewSerializer(
        allow_null=True, help_text="The preview at `level`, with its warnings."
    )
    unplanned = UnplannedAggregateSerializer(
        many=True, help_text="Aggregates the target does not apply to (means, quantiles), and why."
    )
    min_group_sizes = serializers.DictField(
        child=serializers.IntegerField(), help_text="At `level`: mean name → its least group size."
    )
    calibrations = serializers.IntegerField(allow_null=True, help_text="Real calibrations the search made.")
    curve = AccuracyCurvePointSerializer(
        many=True, allow_null=True, help_text="Half-widths per level, when asked for (`curve` or `levels`)."
    )
    version = serializers.IntegerField()
    left = BudgetLeftSerializer()


@extend_schema_field(OpenApiTypes.NUMBER)
class _CheckedNumberField(serializers.Field):
    """A number passed on as given: the service checks it and answers with its own stable code
    (`accuracy_target_invalid`), as it does for a privacy loss."""

    def to_internal_value(self, data):
        return data

    def to_representation(self, value):
        return value


class QueryPlanApi(APIView):
    """Plans a query by accuracy before spending: the least ε (ρ under zCDP) at which every count and
    sum has a 95% half-width within `target_half_width`, with the preview at that level, and/or the
    accuracy curve (half-widths at several levels). Spends nothing, reads no data."""

    class InputSerializer(QueryInputSerializer):
        class Meta:
            ref_name = "QueryPlanInput"

        target_half_width = _CheckedNumberField(
            required=False,
            allow_null=True,
            default=None,
            help_text="The 95% half-width every count and sum must meet; give no ε/ρ with it (δ may be given).",
        )
        curve = serializers.BooleanField(
            required=False, default=False, help_text="Also answer the accuracy curve (default levels)."
        )
        levels = serializers.ListField(
            child=serializers.FloatField(),
            required=False,
            allow_null=True,
            default=None,
            max_length=20,
            help_text="The curve's levels (ε, or ρ under zCDP); implies `curve`.",
        )

    @extend_schema(
        request=InputSerializer,
        operation_id="queries_plan",
        examples=[
            OpenApiExample(
                "The least epsilon for counts within 50, and the curve",
                value={
                    "sql": "SELECT educ, COUNT(*) FROM pums GROUP BY educ",
                    "target_half_width": 50,
                    "curve": True,
                },
                request_only=True,
            ),
            OpenApiExample(
                "The curve at chosen levels",
                value={"spec": {"aggregates": [{"type": "sum", "column": "income"}]}, "levels": [0.1, 1, 10]},
                request_only=True,
            ),
        ],
        responses={200: QueryPlanOutputSerializer, 503: ErrorSerializer},
    )
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        plan_request = query_plan_prepare(actor=request.user, dataset=dataset, **data)
        plan = query_plan_run(request=plan_request, timeout=settings.QUERY_WAIT_SECONDS)
        left = budget_left_for(actor=request.user, dataset=dataset)
        return Response({**plan, "version": plan_request.version.number, "left": asdict(left)})


class QueryListSubmitApi(APIView):
    @extend_schema(responses=QueryOutputSerializer(many=True), operation_id="queries_list")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        return paginated(
            queryset=query_list(actor=request.user, dataset=dataset),
            request=request,
            view=self,
            body=lambda q: query_body(q, answer=query_answer_visible(actor=request.user, query=q)),
        )

    @extend_schema(
        request=QueryReleaseInputSerializer,
        responses={
            200: PolymorphicProxySerializer(
                component_name="QueryReleaseOutput",
                resource_type_field_name=None,
                serializers=[QueryOutputSerializer, QueryBatchOutputSerializer],
            ),
            202: PolymorphicProxySerializer(
                component_name="QueryReleasePending",
                resource_type_field_name=None,
                serializers=[QueryOutputSerializer, QueryBatchOutputSerializer],
            ),
        },
        parameters=[
            OpenApiParameter(
                "wait",
                float,
                description="Seconds to wait for the release before answering "
                "202 (at most the service's QUERY_WAIT_SECONDS; 0: answer at once).",
            )
        ],
        examples=[
            *QUERY_EXAMPLES,
            OpenApiExample("Several at once", value={"queries": [_COUNT_SPEC]}, request_only=True),
        ],
        operation_id="queries_release",
    )
    def post(self, request, organisation: str, slug: str):
        """One query (`sql`/`spec` + `privacy`), or several as `{"queries": [...]}` (each priced,
        debited and answered on its own; the response lists them in order)."""
        # The analyst's membership once, for every check of this request (`membership_given`).
        membership = request_membership(request)
        dataset = dataset_get(
            actor=request.user, organisation_slug=organisation, dataset_slug=slug, membership=membership
        )
        if isinstance(request.data, dict) and "queries" in request.data:
            items = validated(QueryBatchInputSerializer, request.data)["queries"]
            outcomes = query_submit_many(
                actor=request.user, dataset=dataset, items=[dict(i) for i in items], membership=membership
            )
            answered = query_wait_many(
                queries=[query for query, _ in outcomes], timeout=_wait_seconds(request)
            )
            bodies = []
            for query, (_, replayed) in zip(answered, outcomes, strict=True):
                body = query_body(query, replayed=replayed)
                if query.status in {"refused", "failed"}:
                    body["error"] = {"code": query.error_code, "detail": query.error_message}
                bodies.append(body)
            done = all(b["status"] in QUERY_FINISHED for b in bodies)
            return Response({"results": bodies}, status=200 if done else 202)
        data = validated(QueryInputSerializer, request.data)
        query, replayed = query_submit(actor=request.user, dataset=dataset, membership=membership, **data)
        query = query_wait_many(queries=[query], timeout=_wait_seconds(request))[0]
        error = query_error_for(query)
        if error is not None:
            raise error
        done = query.status == "released"
        return Response(query_body(query, replayed=replayed), status=200 if done else 202)


class QueryDetailApi(APIView):
    @extend_schema(responses=QueryOutputSerializer, operation_id="queries_get")
    def get(self, request, query_id: int):
        query = query_get(actor=request.user, query_id=query_id)
        body = query_body(query, answer=query_answer_visible(actor=request.user, query=query))
        if query.status in {"refused", "failed"}:
            body["error"] = {"code": query.error_code, "detail": query.error_message}
        return Response(body)
