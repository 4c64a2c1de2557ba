from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.core.apis import validated
from clearinghouse.datasets.selectors import dataset_get, dataset_is_owner
from clearinghouse.organisations.selectors import organisation_directory_get

from .ledger import allocation_set, budget_set
from .selectors import budget_left_for, budget_spending, query_get, query_list
from .services import (
    query_error_for,
    query_prepare,
    query_preview_run,
    query_submit,
    query_submit_many,
    query_wait,
)


class BudgetApi(APIView):
    """GET: owners see the whole budget with spending per organisation and per day; others see what
    is left to them. PUT: the owner sets the budget (composition is sequential in `measure`)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "BudgetInput"

        measure = serializers.CharField(max_length=16)
        total = serializers.FloatField()
        delta_total = serializers.FloatField(required=False, default=0.0)
        per_query_max = serializers.FloatField(required=False, allow_null=True, default=None)
        per_analyst_cap = serializers.FloatField(required=False, allow_null=True, default=None)

    @extend_schema(responses=dict, operation_id="dataset_budget_get")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        if dataset_is_owner(actor=request.user, dataset=dataset) or request.user.is_operator:
            return Response(budget_spending(actor=request.user, dataset=dataset))
        return Response({"left": asdict(budget_left_for(actor=request.user, dataset=dataset))})

    @extend_schema(request=InputSerializer, responses=dict, operation_id="dataset_budget_set")
    def put(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        budget_set(actor=request.user, dataset=dataset, **validated(self.InputSerializer, request.data))
        return Response(budget_spending(actor=request.user, dataset=dataset))


class AllocationApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AllocationInput"

        amount = serializers.FloatField()
        delta_amount = serializers.FloatField(required=False, default=0.0)

    @extend_schema(request=InputSerializer, responses=dict, operation_id="dataset_budget_allocate")
    def put(self, request, organisation: str, slug: str, grantee: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        allocation_set(actor=request.user, dataset=dataset, organisation=organisation_directory_get(slug=grantee),
                       **validated(self.InputSerializer, request.data))
        return Response(budget_spending(actor=request.user, dataset=dataset))


class QueryInputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryInput"

    spec = serializers.JSONField(required=False, default=None, help_text="A query spec (JSON).")
    sql = serializers.CharField(required=False, default=None, max_length=20_000,
                                help_text="Or SQL in the supported subset, with `privacy`.")
    privacy = serializers.JSONField(required=False, default=None, help_text='e.g. {"epsilon": 1.0}')


class QueryBatchInputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "QueryBatchInput"

    queries = QueryInputSerializer(many=True, help_text="Several queries released in one request.")


def _wait_seconds(request) -> float:
    try:
        asked = float(request.query_params.get("wait", settings.QUERY_WAIT_SECONDS))
    except ValueError:
        asked = settings.QUERY_WAIT_SECONDS
    return max(0.0, min(asked, settings.QUERY_WAIT_SECONDS))


def query_body(query, *, replayed: bool = False) -> dict:
    body = {
        "id": query.pk, "url": reverse("api:query", args=[query.pk]), "status": query.status,
        "dataset": f"{query.dataset.organisation.slug}/{query.dataset.slug}", "version": query.version.number,
        "query_hash": query.query_hash, "spec": query.spec, "sql": query.sql or None,
        "cost": {"amount": query.cost, "delta": query.cost_delta}, "replayed": replayed,
        "created_at": query.created_at, "finished_at": query.finished_at,
    }
    if query.status == "released":
        body["result"] = {k: query.result[k] for k in ("columns", "rows", "intervals", "aggregates", "group_by", "cost")}
    return body


class QueryPreviewApi(APIView):
    @extend_schema(request=QueryInputSerializer, responses=dict, operation_id="queries_preview")
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(QueryInputSerializer, request.data)
        version, budget, spec = query_prepare(actor=request.user, dataset=dataset, **data)
        preview = query_preview_run(version=version, spec=spec, timeout=settings.QUERY_WAIT_SECONDS)
        left = budget_left_for(actor=request.user, dataset=dataset)
        return Response({**preview, "version": version.number, "left": asdict(left)})


class QueryListSubmitApi(APIView):
    @extend_schema(responses=dict, operation_id="queries_list")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        queries = query_list(actor=request.user, dataset=dataset)[:200]
        return Response({"results": [query_body(q) for q in queries]})

    @extend_schema(request=QueryInputSerializer, responses={200: dict, 202: dict}, operation_id="queries_release")
    def post(self, request, organisation: str, slug: str):
        """One query (`sql`/`spec` + `privacy`), or several as `{"queries": [...]}` (each priced,
        debited and answered on its own; the response lists them in order)."""
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        if isinstance(request.data, dict) and "queries" in request.data:
            items = validated(QueryBatchInputSerializer, request.data)["queries"]
            outcomes = query_submit_many(actor=request.user, dataset=dataset, items=[dict(i) for i in items])
            bodies = []
            for query, replayed in outcomes:
                query = query_wait(query=query, timeout=_wait_seconds(request))
                body = query_body(query, replayed=replayed)
                if query.status == "failed":
                    body["error"] = {"code": query.error_code, "detail": query.error_message}
                bodies.append(body)
            done = all(b["status"] in {"released", "failed"} for b in bodies)
            return Response({"results": bodies}, status=200 if done else 202)
        data = validated(QueryInputSerializer, request.data)
        query, replayed = query_submit(actor=request.user, dataset=dataset, **data)
        query = query_wait(query=query, timeout=_wait_seconds(request))
        error = query_error_for(query)
        if error is not None:
            raise error
        done = query.status == "released"
        return Response(query_body(query, replayed=replayed), status=200 if done else 202)


class QueryDetailApi(APIView):
    @extend_schema(responses=dict, operation_id="queries_get")
    def get(self, request, query_id: int):
        query = query_get(actor=request.user, query_id=query_id)
        body = query_body(query)
        if query.status == "failed":
            body["error"] = {"code": query.error_code, "detail": query.error_message}
        return Response(body)
