from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.accounts.authentication import APITokenAuthentication
from clearinghouse.core.apis import ErrorSerializer, StrictCharField, paginated, text_field, validated
from clearinghouse.core.errors import NotFound
from clearinghouse.core.parsers import JSONParser
from clearinghouse.core.schema import ERROR_DESCRIPTIONS
from clearinghouse.organisations.selectors import organisation_directory_get

from .models import (
    ACCESS_REQUEST_NOTE_MAX,
    ACCESS_REQUEST_REASON_MAX,
    AccessRequestStatus,
    GrantPurpose,
    VersionStatus,
)
from .selectors import (
    access_request_get,
    access_request_list_for_dataset,
    access_request_mine,
    agreement_accepted,
    agreement_current,
    catalogue_budget_terms,
    catalogue_dataset_get,
    catalogue_list,
    dataset_get,
    dataset_grant_get,
    dataset_grant_list,
    dataset_is_owner,
    dataset_list,
    dataset_register_organisation,
    dataset_schema_visible,
    dataset_version_get,
    dataset_version_list,
)
from .services import (
    ACCESS_DECISIONS,
    access_request_create,
    access_request_decide,
    access_request_withdraw,
    agreement_accept,
    agreement_publish,
    dataset_grant_create,
    dataset_grant_revoke,
    dataset_listing_set,
    dataset_register,
    dataset_schema_set,
    dataset_version_create,
    dataset_version_retry,
)
from .uploads import csrf_refusal, dataset_upload_receiving, upload_reader_options


class SchemaField(serializers.JSONField):
    """A schema as a JSON object, or as JSON/YAML text."""


class DatasetOutputSerializer(serializers.Serializer):
    organisation = serializers.CharField(source="organisation.slug")
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    schema = serializers.SerializerMethodField(
        help_text="The confirmed schema; an unconfirmed proposal (read from the data) only for the owner, "
        "null for everyone else."
    )
    schema_confirmed = serializers.BooleanField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_schema(self, dataset) -> dict | None:
        # `viewer_is_owner` comes from dataset_list; without it (a service's return value) the
        # viewer is not assumed to be the owner.
        return dataset_schema_visible(dataset=dataset, owner=bool(getattr(dataset, "viewer_is_owner", False)))


class VersionOutputSerializer(serializers.Serializer):
    """Non-owners (grantees, operators) see this much: not the row count (an exact count is not
    differentially private), nor sizes or the ingestion's end (with the upload time, its duration is a
    size signal); owners additionally get those, the report and errors (see `version_body`)."""

    number = serializers.IntegerField()
    status: serializers.Field = serializers.CharField()  # a ChoiceField in `VersionBodySerializer`
    created_at = serializers.DateTimeField()


class DatasetDetailOutputSerializer(DatasetOutputSerializer):
    class Meta:
        ref_name = "DatasetDetailOutput"

    agreement_version = serializers.IntegerField(
        allow_null=True, help_text="The current data-use agreement's."
    )
    agreement_accepted = serializers.BooleanField(help_text="Whether you accepted the current agreement.")


class VersionBodySerializer(VersionOutputSerializer):
    """`version_body` as documented: the fields after `status` reach the dataset's owners only.
    (Never used to render: `VersionOutputSerializer` is what non-owners get.)"""

    class Meta:
        ref_name = "DatasetVersionOutput"

    status = serializers.ChoiceField(
        choices=VersionStatus.choices,
        help_text="`awaiting_schema`: a first upload of a dataset without a confirmed schema; a schema was "
        "proposed from it (`error_code` `schema_unconfirmed`), and confirming the dataset's schema "
        "validates it again by itself (no retry needed). Not a failure.",
    )
    finished_at = serializers.DateTimeField(required=False, allow_null=True)
    row_count = serializers.IntegerField(required=False, allow_null=True)
    source_name = serializers.CharField(required=False)
    source_format = serializers.CharField(required=False)
    source_bytes = serializers.IntegerField(required=False)
    repair = serializers.CharField(required=False)
    error_code = serializers.CharField(required=False)
    error_message = serializers.CharField(required=False)
    quality_report = serializers.JSONField(required=False, allow_null=True)
    content_digests = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="The stored rows' content digests (`training.digest`): `{scheme, rows, pairs: [{text_column, "
        "label_column, digest}]}`, what a private federated job's member checks its local file against "
        "(`--expect-rows/--expect-digest` of the preflight); null for a version ingested before digests.",
    )
    schema = serializers.JSONField(required=False)


def version_body(version, *, owner: bool) -> dict:
    body = dict(VersionOutputSerializer(version).data)
    if owner:
        body.update(
            finished_at=serializers.DateTimeField().to_representation(version.finished_at)
            if version.finished_at
            else None,
            row_count=version.row_count,
            source_name=version.source_name,
            source_format=version.source_format,
            source_bytes=version.source_bytes,
            repair=version.repair,
            error_code=version.error_code,
            error_message=version.error_message,
            quality_report=version.quality_report,
            content_digests=version.content_digests,
            schema=version.schema,
        )
    return body


class DatasetListRegisterApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetRegisterInput"

        name = text_field()
        slug = text_field()
        description = text_field(required=False, default="")
        schema = SchemaField(required=False, allow_null=True, default=None)

    @extend_schema(responses=DatasetOutputSerializer(many=True), operation_id="datasets_list")
    def get(self, request):
        return paginated(
            queryset=dataset_list(actor=request.user),
            serializer_class=DatasetOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer, responses={201: DatasetOutputSerializer}, operation_id="datasets_register"
    )
    def post(self, request):
        dataset = dataset_register(
            actor=request.user,
            organisation=dataset_register_organisation(actor=request.user),
            **validated(self.InputSerializer, request.data),
        )
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetSchemaInput"

        schema = SchemaField()

    @extend_schema(responses=DatasetDetailOutputSerializer, operation_id="datasets_get")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        body = dict(DatasetOutputSerializer(dataset).data)
        agreement = agreement_current(dataset=dataset)
        body["agreement_version"] = agreement.version if agreement else None
        body["agreement_accepted"] = agreement_accepted(user=request.user, dataset=dataset)
        return Response(body)

    @extend_schema(
        request=InputSerializer, responses=DatasetOutputSerializer, operation_id="datasets_set_schema"
    )
    def patch(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        dataset = dataset_schema_set(actor=request.user, dataset=dataset, schema=data["schema"])
        return Response(DatasetOutputSerializer(dataset).data)


class UploadSessionAuthentication(SessionAuthentication):
    """Session authentication for the upload endpoint: its CSRF token must come in the X-CSRFToken
    header, checked without reading the body (DRF's check reads the form, which would parse the
    upload before the view has authorized it)."""

    def enforce_csrf(self, request):
        reason = csrf_refusal(request._request, None)
        if reason:
            raise drf_exceptions.PermissionDenied(
                f"CSRF Failed: {reason} Send the token in the X-CSRFToken header."
            )


class VersionListUploadApi(APIView):
    parser_classes = (MultiPartParser, JSONParser)  # the project's JSON parser (clearinghouse.core.parsers)
    authentication_classes = (APITokenAuthentication, UploadSessionAuthentication)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetUploadInput"

        # The file is staged as it streams in and checked by the staging handler (`file_required`,
        # `unexpected_file_field`, `file_too_large`) and the service (`empty_file`).
        file = serializers.FileField(allow_empty_file=True)
        format = text_field(required=False, default="")
        delimiter = text_field(
            required=False, default="", trim_whitespace=False, help_text="\\t or tab for a tab"
        )
        quote = text_field(required=False, default='"', help_text="\" (default), ' or none")
        header = serializers.BooleanField(required=False, default=True)
        repair = text_field(required=False, default="none")

    @extend_schema(responses=VersionBodySerializer(many=True), operation_id="dataset_versions_list")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        owner = dataset_is_owner(actor=request.user, dataset=dataset)
        versions = dataset_version_list(actor=request.user, dataset=dataset)
        return paginated(
            queryset=versions,
            body=lambda version: version_body(version, owner=owner),
            request=request,
            view=self,
        )

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        responses={202: VersionBodySerializer},
        operation_id="dataset_versions_upload",
    )
    def post(self, request, organisation: str, slug: str):
        # Who may upload here, and the staging quota, before a byte of the body is read or staged; on
        # exit, deletes what no version records, however it ends.
        with dataset_upload_receiving(
            request._request, actor=request.user, organisation_slug=organisation, dataset_slug=slug
        ) as (dataset, receipt):
            upload = receipt.upload(request.FILES)  # streams the `file` part through the encrypting handler
            data = validated(self.InputSerializer, request.data)
            version = dataset_version_create(
                actor=request.user,
                dataset=dataset,
                upload=upload,
                **upload_reader_options(
                    fmt=data["format"],
                    delimiter=data["delimiter"],
                    quote=data["quote"],
                    has_header=data["header"],
                    repair=data["repair"],
                ),
            )
        return Response(version_body(version, owner=True), status=status.HTTP_202_ACCEPTED)


class VersionDetailApi(APIView):
    @extend_schema(responses=VersionBodySerializer, operation_id="dataset_versions_get")
    def get(self, request, organisation: str, slug: str, number: int):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
        return Response(version_body(version, owner=dataset_is_owner(actor=request.user, dataset=dataset)))


class VersionRetryApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetRetryInput"

        repair = StrictCharField(required=False, allow_null=True, default=None, max_length=100)

    @extend_schema(
        request=InputSerializer, responses={202: VersionBodySerializer}, operation_id="dataset_versions_retry"
    )
    def post(self, request, organisation: str, slug: str, number: int):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
        data = validated(self.InputSerializer, request.data)
        version = dataset_version_retry(actor=request.user, version=version, repair=data["repair"])
        return Response(version_body(version, owner=True), status=status.HTTP_202_ACCEPTED)


class GrantOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    organisation = serializers.CharField(source="organisation.slug")
    purpose = serializers.CharField()
    granted_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)


class GrantListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetGrantInput"

        organisation = text_field()
        purpose = text_field()

    @extend_schema(responses=GrantOutputSerializer(many=True), operation_id="dataset_grants_list")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        return paginated(
            queryset=dataset_grant_list(actor=request.user, dataset=dataset),
            serializer_class=GrantOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer, responses={201: GrantOutputSerializer}, operation_id="dataset_grants_create"
    )
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        grantee = organisation_directory_get(slug=data["organisation"])
        grant = dataset_grant_create(
            actor=request.user, dataset=dataset, organisation=grantee, purpose=data["purpose"]
        )
        return Response(GrantOutputSerializer(grant).data, status=status.HTTP_201_CREATED)


class GrantRevokeApi(APIView):
    @extend_schema(request=None, responses=GrantOutputSerializer, operation_id="dataset_grants_revoke")
    def post(self, request, grant_id: int):
        grant = dataset_grant_revoke(
            actor=request.user, grant=dataset_grant_get(actor=request.user, grant_id=grant_id)
        )
        return Response(GrantOutputSerializer(grant).data)


class AgreementApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementPublishInput"

        text = StrictCharField(max_length=100_000, allow_blank=True)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementOutput"

        version = serializers.IntegerField()
        text = serializers.CharField()
        created_at = serializers.DateTimeField()

    class DetailOutputSerializer(OutputSerializer):
        class Meta:
            ref_name = "AgreementDetailOutput"

        accepted = serializers.BooleanField(help_text="Whether you accepted this version.")

    @extend_schema(responses=DetailOutputSerializer, operation_id="dataset_agreement_get")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        agreement = agreement_current(dataset=dataset)
        if agreement is None:
            raise NotFound("This dataset has no data-use agreement.", code="no_agreement")
        body = dict(
            self.OutputSerializer(agreement).data,
            accepted=agreement_accepted(user=request.user, dataset=dataset),
        )
        return Response(body)

    @extend_schema(
        request=InputSerializer, responses={201: OutputSerializer}, operation_id="dataset_agreement_publish"
    )
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        agreement = agreement_publish(
            actor=request.user, dataset=dataset, text=validated(self.InputSerializer, request.data)["text"]
        )
        return Response(self.OutputSerializer(agreement).data, status=status.HTTP_201_CREATED)


class AgreementAcceptApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementAcceptInput"

        version = serializers.IntegerField(min_value=1)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementAcceptOutput"

        version = serializers.IntegerField()
        accepted_at = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer, responses={201: OutputSerializer}, operation_id="dataset_agreement_accept"
    )
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        acceptance = agreement_accept(actor=request.user, dataset=dataset, version=data["version"])
        return Response(
            {"version": acceptance.agreement.version, "accepted_at": acceptance.accepted_at},
            status=status.HTTP_201_CREATED,
        )


# --- Catalogue and access requests -----------------------------------------------------------------


def _errors(**descriptions: str) -> dict:
    """Documented error answers: status → the codes it carries here."""
    return {
        int(status[1:]): OpenApiResponse(
            ErrorSerializer, description=f"{ERROR_DESCRIPTIONS[int(status[1:])]} {text}"
        )
        for status, text in descriptions.items()
    }


class BudgetTermsSerializer(serializers.Serializer):
    measure = serializers.CharField(help_text="pure (ε) or zCDP (ρ).")
    total = serializers.FloatField(help_text="The dataset's whole-life budget.")
    per_query_max = serializers.FloatField(allow_null=True, help_text="The most one query may spend.")


class AccessSerializer(serializers.Serializer):
    granted = serializers.ListField(
        child=serializers.CharField(),
        help_text="The purposes (query, training) your organisation holds an active grant for.",
    )
    pending = serializers.ListField(
        child=serializers.CharField(),
        help_text="The purposes (query, training) your organisation has a pending access request for.",
    )


class CatalogueEntryOutputSerializer(serializers.Serializer):
    """A listed dataset's public facts: never a schema proposal, row counts, versions or spending."""

    organisation = serializers.CharField(source="organisation.slug")
    organisation_name = serializers.CharField(source="organisation.name")
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    schema = serializers.SerializerMethodField(
        help_text="The confirmed schema (columns, types, bounds, categories)."
    )
    budget = serializers.SerializerMethodField(
        help_text="The budget policy's public terms; null while the owner has set none."
    )
    yours = serializers.BooleanField(source="viewer_is_owner", help_text="Your organisation owns it.")
    access = serializers.SerializerMethodField()

    @extend_schema_field(serializers.DictField())
    def get_schema(self, dataset) -> dict | None:
        return dataset_schema_visible(dataset=dataset, owner=False)  # listed datasets' is confirmed

    @extend_schema_field(BudgetTermsSerializer(allow_null=True))
    def get_budget(self, dataset) -> dict | None:
        return catalogue_budget_terms(dataset=dataset)

    @extend_schema_field(AccessSerializer)
    def get_access(self, dataset) -> dict:
        return {
            "granted": [p for p in GrantPurpose.values if getattr(dataset, f"granted_{p}", False)],
            "pending": [p for p in GrantPurpose.values if getattr(dataset, f"pending_{p}", False)],
        }


class CatalogueApi(APIView):
    @extend_schema(responses=CatalogueEntryOutputSerializer(many=True), operation_id="catalogue_list")
    def get(self, request):
        return paginated(
            queryset=catalogue_list(actor=request.user),
            serializer_class=CatalogueEntryOutputSerializer,
            request=request,
            view=self,
        )


class DatasetListingApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetListingInput"

        listed = serializers.BooleanField(
            help_text="true: offer the dataset in the catalogue; false: take it out."
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetListingOutput"

        organisation = serializers.CharField(source="organisation.slug")
        slug = serializers.CharField()
        listed = serializers.BooleanField()

    @extend_schema(
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            **_errors(
                _403="`not_owner` (operators), `permission_denied` (a role without the dataset capability).",
                _404="`not_found`: no such dataset, or not your organisation's.",
                _409="`schema_not_confirmed`: only a dataset with a confirmed schema can be listed.",
            ),
        },
        operation_id="datasets_set_listing",
    )
    def put(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        dataset = dataset_listing_set(actor=request.user, dataset=dataset, listed=data["listed"])
        return Response(self.OutputSerializer(dataset).data)


class AccessRequestOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AccessRequestOutput"

    id = serializers.IntegerField()
    dataset_organisation = serializers.CharField(source="dataset.organisation.slug")
    dataset = serializers.CharField(source="dataset.slug")
    dataset_name = serializers.CharField(source="dataset.name")
    organisation = serializers.CharField(source="organisation.slug", help_text="The requesting organisation.")
    organisation_name = serializers.CharField(source="organisation.name")
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True, default=None)
    purpose = serializers.ChoiceField(choices=GrantPurpose.choices)
    reason = serializers.CharField()
    status = serializers.ChoiceField(choices=AccessRequestStatus.choices)
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, default=None)
    decided_at = serializers.DateTimeField(allow_null=True)
    decision_note = serializers.CharField()
    grant_id = serializers.IntegerField(allow_null=True, help_text="The grant an approval made.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DatasetAccessRequestListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AccessRequestCreateInput"

        purpose = text_field(help_text="query or training")
        reason = text_field(
            help_text=f"Why you need it (required, at most {ACCESS_REQUEST_REASON_MAX} characters)."
        )

    @extend_schema(
        responses=AccessRequestOutputSerializer(many=True),
        operation_id="dataset_access_requests_list",
        description="The owner organisation (and operators): every request for the dataset; anyone else "
        "who sees it (in the catalogue): their own organisation's.",
    )
    def get(self, request, organisation: str, slug: str):
        dataset = catalogue_dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        return paginated(
            queryset=access_request_list_for_dataset(actor=request.user, dataset=dataset),
            serializer_class=AccessRequestOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            201: AccessRequestOutputSerializer,
            **_errors(
                _400="`invalid_purpose`, `reason_required`, `text_too_long`, `invalid_name`, `own_dataset`.",
                _403="`operator_not_member`: operators belong to no organisation.",
                _404="`not_found`: not in the catalogue and not visible to you.",
                _409="`not_listed`, `already_granted`, `duplicate_request` (one pending request per "
                "dataset, organisation and purpose).",
            ),
        },
        operation_id="dataset_access_requests_create",
    )
    def post(self, request, organisation: str, slug: str):
        dataset = catalogue_dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        access_request = access_request_create(
            actor=request.user, dataset=dataset, purpose=data["purpose"], reason=data["reason"]
        )
        return Response(AccessRequestOutputSerializer(access_request).data, status=status.HTTP_201_CREATED)


class AccessRequestListApi(APIView):
    class InputSerializer(serializers.Serializer):
        """The filters (query parameters), both optional."""

        class Meta:
            ref_name = "AccessRequestListInput"

        direction = serializers.ChoiceField(
            choices=["incoming", "outgoing"],
            required=False,
            help_text="incoming: to your organisation's datasets; outgoing: your organisation's requests.",
        )
        status = serializers.ChoiceField(choices=AccessRequestStatus.choices, required=False)

    @extend_schema(
        parameters=[InputSerializer],
        responses={200: AccessRequestOutputSerializer(many=True)},
        operation_id="access_requests_list",
    )
    def get(self, request):
        filters = validated(self.InputSerializer, request.query_params)
        return paginated(
            queryset=access_request_mine(
                actor=request.user, direction=filters.get("direction"), status=filters.get("status")
            ),
            serializer_class=AccessRequestOutputSerializer,
            request=request,
            view=self,
        )


class AccessRequestDecideApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AccessRequestDecideInput"

        decision = serializers.ChoiceField(choices=list(ACCESS_DECISIONS))
        note = text_field(
            required=False,
            default="",
            help_text=f"Shown to the requester (at most {ACCESS_REQUEST_NOTE_MAX} characters).",
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            200: AccessRequestOutputSerializer,
            **_errors(
                _400="`invalid_decision`, `text_too_long`, `invalid_name`.",
                _403="`not_owner` (the requester, operators), `permission_denied` (a role without the "
                "dataset capability).",
                _404="`not_found`: no such request, or not concerning your organisation.",
                _409="`access_request_decided`, `already_granted`, `requester_not_approved`.",
            ),
        },
        operation_id="access_requests_decide",
        description="Approving makes the grant (as `dataset_grants_create` does) in the same transaction.",
    )
    def post(self, request, request_id: int):
        access_request = access_request_get(actor=request.user, request_id=request_id)
        data = validated(self.InputSerializer, request.data)
        access_request = access_request_decide(
            actor=request.user, access_request=access_request, decision=data["decision"], note=data["note"]
        )
        return Response(AccessRequestOutputSerializer(access_request).data)


class AccessRequestWithdrawApi(APIView):
    @extend_schema(
        request=None,
        responses={
            200: AccessRequestOutputSerializer,
            **_errors(
                _403="`not_requester` (the dataset's owner, operators).",
                _404="`not_found`: no such request, or not concerning your organisation.",
                _409="`access_request_decided`: it is no longer pending.",
            ),
        },
        operation_id="access_requests_withdraw",
    )
    def post(self, request, request_id: int):
        access_request = access_request_withdraw(
            actor=request.user, access_request=access_request_get(actor=request.user, request_id=request_id)
        )
        return Response(AccessRequestOutputSerializer(access_request).data)
