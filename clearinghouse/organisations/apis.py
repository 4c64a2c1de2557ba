from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from clearinghouse.core.apis import paginated, text_field, validated
from clearinghouse.datasets.selectors import datasets_overview
from clearinghouse.queries.selectors import budgets_overview
from federation.selectors import jobs_overview

from .roles import Role
from .selectors import (
    ORGANISATION_DECISIONS,
    invitation_get,
    invitation_list,
    join_request_get,
    join_request_list,
    membership_get,
    membership_list,
    organisation_directory,
    organisation_directory_get,
    organisation_get,
    organisation_list,
    organisations_overview,
)
from .services import (
    invitation_accept,
    invitation_create,
    invitation_revoke,
    join_request_create,
    join_request_decide,
    join_request_withdraw,
    membership_change_role,
    membership_remove,
    organisation_apply,
    organisation_set_status,
    organisation_update,
)


class OrganisationOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField()
    country = serializers.CharField()
    contact_email = serializers.EmailField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    decided_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class OrganisationListApplyApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OrganisationListApplyInput"

        name = text_field()
        slug = text_field()
        country = text_field()
        contact_email = text_field()

    @extend_schema(responses=OrganisationOutputSerializer(many=True), operation_id="organisations_list")
    def get(self, request):
        organisations = organisation_list(actor=request.user, status=request.query_params.get("status"))
        return paginated(
            queryset=organisations, serializer_class=OrganisationOutputSerializer, request=request, view=self
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: OrganisationOutputSerializer},
        operation_id="organisations_apply",
    )
    def post(self, request):
        organisation = organisation_apply(actor=request.user, **validated(self.InputSerializer, request.data))
        return Response(OrganisationOutputSerializer(organisation).data, status=status.HTTP_201_CREATED)


class OrganisationDirectoryApi(APIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OrganisationDirectoryOutput"

        name = serializers.CharField()
        slug = serializers.CharField()
        country = serializers.CharField()

    @extend_schema(responses=OutputSerializer(many=True), operation_id="organisations_directory")
    def get(self, request):
        return paginated(
            queryset=organisation_directory(),
            serializer_class=self.OutputSerializer,
            request=request,
            view=self,
        )


class OrganisationDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OrganisationDetailInput"

        name = text_field(required=False)
        country = text_field(required=False)
        contact_email = text_field(required=False)

    @extend_schema(responses=OrganisationOutputSerializer, operation_id="organisations_get")
    def get(self, request, slug: str):
        return Response(OrganisationOutputSerializer(organisation_get(actor=request.user, slug=slug)).data)

    @extend_schema(
        request=InputSerializer, responses=OrganisationOutputSerializer, operation_id="organisations_update"
    )
    def patch(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        organisation = organisation_update(
            actor=request.user, organisation=organisation, **validated(self.InputSerializer, request.data)
        )
        return Response(OrganisationOutputSerializer(organisation).data)


class OrganisationDecisionApi(APIView):
    """Operators move an organisation: approve, reject, suspend, reinstate."""

    ACTIONS = ORGANISATION_DECISIONS  # the portal's decisions too (`organisations.selectors`)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OrganisationDecisionInput"

        reason = text_field(required=False, default="")

    @extend_schema(
        request=InputSerializer, responses=OrganisationOutputSerializer, operation_id="organisations_decide"
    )
    def post(self, request, slug: str, action: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        data = validated(self.InputSerializer, request.data)
        organisation = organisation_set_status(
            actor=request.user, organisation=organisation, status=self.ACTIONS[action], reason=data["reason"]
        )
        return Response(OrganisationOutputSerializer(organisation).data)


class MembershipOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField(source="user.username")
    email = serializers.EmailField(source="user.email")
    organisation = serializers.CharField(source="organisation.slug")
    role = serializers.CharField()
    created_at = serializers.DateTimeField()


class MembershipListApi(APIView):
    @extend_schema(responses=MembershipOutputSerializer(many=True), operation_id="memberships_list")
    def get(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        return paginated(
            queryset=membership_list(actor=request.user, organisation=organisation),
            serializer_class=MembershipOutputSerializer,
            request=request,
            view=self,
        )


class MembershipDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MembershipDetailInput"

        role = text_field()

    @extend_schema(responses=MembershipOutputSerializer, operation_id="memberships_get")
    def get(self, request, membership_id: int):
        return Response(
            MembershipOutputSerializer(membership_get(actor=request.user, membership_id=membership_id)).data
        )

    @extend_schema(
        request=InputSerializer, responses=MembershipOutputSerializer, operation_id="memberships_change_role"
    )
    def patch(self, request, membership_id: int):
        membership = membership_get(actor=request.user, membership_id=membership_id)
        data = validated(self.InputSerializer, request.data)
        membership = membership_change_role(actor=request.user, membership=membership, role=data["role"])
        return Response(MembershipOutputSerializer(membership).data)

    @extend_schema(responses={204: None}, operation_id="memberships_remove")
    def delete(self, request, membership_id: int):
        membership_remove(
            actor=request.user, membership=membership_get(actor=request.user, membership_id=membership_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class JoinRequestOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField(source="user.username")
    organisation = serializers.CharField(source="organisation.slug")
    message = serializers.CharField()
    status = serializers.CharField()
    role = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)


class JoinRequestListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "JoinRequestListCreateInput"

        organisation = text_field()
        message = text_field(required=False, default="")

    @extend_schema(responses=JoinRequestOutputSerializer(many=True), operation_id="join_requests_list")
    def get(self, request):
        requests = join_request_list(actor=request.user, status=request.query_params.get("status"))
        return paginated(
            queryset=requests, serializer_class=JoinRequestOutputSerializer, request=request, view=self
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: JoinRequestOutputSerializer},
        operation_id="join_requests_create",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        organisation = organisation_directory_get(slug=data["organisation"])
        join_request = join_request_create(
            actor=request.user, organisation=organisation, message=data["message"]
        )
        return Response(JoinRequestOutputSerializer(join_request).data, status=status.HTTP_201_CREATED)


class JoinRequestDecisionApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "JoinRequestDecisionInput"

        role = text_field(required=False, default=Role.ANALYST)
        reason = text_field(required=False, default="")

    @extend_schema(
        request=InputSerializer, responses=JoinRequestOutputSerializer, operation_id="join_requests_decide"
    )
    def post(self, request, join_request_id: int, action: str):
        join_request = join_request_get(actor=request.user, join_request_id=join_request_id)
        if action == "withdraw":
            join_request = join_request_withdraw(actor=request.user, join_request=join_request)
        else:
            data = validated(self.InputSerializer, request.data)
            join_request = join_request_decide(
                actor=request.user,
                join_request=join_request,
                approve=action == "approve",
                role=data["role"],
                reason=data["reason"],
            )
        return Response(JoinRequestOutputSerializer(join_request).data)


class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    organisation = serializers.CharField(source="organisation.slug")
    email = serializers.EmailField()
    role = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    is_open = serializers.BooleanField()


class InvitationListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "InvitationListCreateInput"

        email = text_field()
        role = text_field()

    class CreatedSerializer(InvitationOutputSerializer):
        class Meta:
            ref_name = "InvitationListCreateCreated"

        accept_url = serializers.CharField(help_text="The secret link; shown only in this response.")
        token = serializers.CharField(
            help_text="The secret token in the link (for `invitations/accept`); shown only in this response."
        )

    @extend_schema(responses=InvitationOutputSerializer(many=True), operation_id="invitations_list")
    def get(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        return paginated(
            queryset=invitation_list(actor=request.user, organisation=organisation),
            serializer_class=InvitationOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer, responses={201: CreatedSerializer}, operation_id="invitations_create"
    )
    def post(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        invitation, token = invitation_create(
            actor=request.user, organisation=organisation, **validated(self.InputSerializer, request.data)
        )
        url = request.build_absolute_uri(reverse("portal:invitation_accept", args=[token]))
        return Response(
            dict(InvitationOutputSerializer(invitation).data, accept_url=url, token=token),
            status=status.HTTP_201_CREATED,
        )


class InvitationRevokeApi(APIView):
    @extend_schema(request=None, responses=InvitationOutputSerializer, operation_id="invitations_revoke")
    def post(self, request, invitation_id: int):
        invitation = invitation_revoke(
            actor=request.user, invitation=invitation_get(actor=request.user, invitation_id=invitation_id)
        )
        return Response(InvitationOutputSerializer(invitation).data)


class InvitationAcceptApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "InvitationAcceptInput"

        token = text_field()

    @extend_schema(
        request=InputSerializer,
        responses={201: MembershipOutputSerializer},
        operation_id="invitations_accept",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        membership = invitation_accept(actor=request.user, token=data["token"])
        return Response(MembershipOutputSerializer(membership).data, status=status.HTTP_201_CREATED)


# --- The operators' consortium overview: metadata of every organisation, dataset, budget and
# federated job (what operators read anyway through the endpoints above and the datasets', queries'
# and federation's, never rows, row counts, sizes, keys or tokens: docs/data-exposure.md). The portal's
# `portal:operator_overview` shows the same selectors' answers.
class OverviewOrganisationSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewOrganisation"

    name = serializers.CharField()
    slug = serializers.CharField()
    country = serializers.CharField()
    status = serializers.CharField()
    members = serializers.IntegerField(help_text="How many people belong to it.")
    created_at = serializers.DateTimeField()


class OverviewDatasetSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewDataset"

    organisation = serializers.CharField(source="organisation.slug")
    slug = serializers.CharField()
    name = serializers.CharField()
    schema_confirmed = serializers.BooleanField()
    listed = serializers.BooleanField(
        allow_null=True, help_text="Offered in the catalogue (null where this deployment has no catalogue)."
    )
    versions_ready = serializers.IntegerField(help_text="Ready versions (non-owners see no other).")
    latest_version = serializers.IntegerField(allow_null=True, help_text="The newest ready version.")
    latest_version_at = serializers.DateTimeField(allow_null=True, help_text="Its upload time.")
    created_at = serializers.DateTimeField()


class OverviewBudgetSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewBudget"

    dataset = serializers.SerializerMethodField(help_text="owner/slug")
    measure = serializers.CharField()
    total = serializers.FloatField()
    spent = serializers.FloatField()
    left = serializers.FloatField(help_text="The total less what was spent.")
    delta_total = serializers.FloatField()
    delta_spent = serializers.FloatField()
    allocations = serializers.IntegerField(source="allocations_count", help_text="Organisations allocated.")

    def get_dataset(self, budget) -> str:
        return f"{budget.dataset.organisation.slug}/{budget.dataset.slug}"


class OverviewJobSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewJob"

    id = serializers.IntegerField()
    name = serializers.CharField()
    state = serializers.CharField()
    participants = serializers.IntegerField(source="participants_count", help_text="Organisations invited.")
    participants_accepted = serializers.IntegerField()
    rounds_completed = serializers.IntegerField(source="rounds_done")
    num_rounds = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class OverviewOrganisationsSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewOrganisations"

    count = serializers.IntegerField(help_text="How many match `q`.")
    results = OverviewOrganisationSerializer(many=True, help_text="This page of them.")


class OverviewDatasetsSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewDatasets"

    count = serializers.IntegerField(help_text="How many match `q`.")
    results = OverviewDatasetSerializer(many=True, help_text="This page of them.")


class OverviewBudgetsSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewBudgets"

    count = serializers.IntegerField(help_text="How many match `q`.")
    results = OverviewBudgetSerializer(many=True, help_text="This page of them.")


class OverviewJobsSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OverviewJobs"

    count = serializers.IntegerField(help_text="How many match `q`.")
    results = OverviewJobSerializer(many=True, help_text="This page of them.")


class OperatorOverviewApi(APIView):
    """Operators only (403 `operator_required` for everyone else): one page of each section."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OperatorOverviewInput"

        q = text_field(
            required=False,
            default="",
            help_text="Keeps what names it: an organisation's, dataset's or job's name or slug (any case).",
        )
        page = serializers.IntegerField(
            required=False,
            default=1,
            min_value=1,
            max_value=1_000_000,
            help_text="The page of every section (as many items a page as the API's lists).",
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OperatorOverviewOutput"

        q = serializers.CharField()
        page = serializers.IntegerField()
        organisations = OverviewOrganisationsSerializer()
        datasets = OverviewDatasetsSerializer()
        budgets = OverviewBudgetsSerializer()
        jobs = OverviewJobsSerializer()

    @extend_schema(parameters=[InputSerializer], responses=OutputSerializer, operation_id="operator_overview")
    def get(self, request):
        filters = validated(self.InputSerializer, request.query_params)
        q, page = filters["q"].strip(), filters["page"]
        size = api_settings.PAGE_SIZE
        sections = {
            "organisations": organisations_overview(actor=request.user, q=q),
            "datasets": datasets_overview(actor=request.user, q=q),
            "budgets": budgets_overview(actor=request.user, q=q),
            "jobs": jobs_overview(actor=request.user, q=q),
        }
        body = {
            name: {"count": items.count(), "results": items[(page - 1) * size : page * size]}
            for name, items in sections.items()
        }
        return Response(self.OutputSerializer({"q": q, "page": page, **body}).data)
