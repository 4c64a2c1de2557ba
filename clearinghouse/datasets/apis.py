from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.accounts.authentication import APITokenAuthentication
from clearinghouse.core.apis import StrictCharField, paginated, text_field, validated
from clearinghouse.core.errors import NotFound
from clearinghouse.core.parsers import JSONParser
from clearinghouse.organisations.selectors import organisation_directory_get

from .models import VersionStatus
from .selectors import (
    agreement_accepted,
    agreement_current,
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
    agreement_accept,
    agreement_publish,
    dataset_grant_create,
    dataset_grant_revoke,
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

    status = serializers.ChoiceField(choices=VersionStatus.choices)
    finished_at = serializers.DateTimeField(required=False, allow_null=True)
    row_count = serializers.IntegerField(required=False, allow_null=True)
    source_name = serializers.CharField(required=False)
    source_format = serializers.CharField(required=False)
    source_bytes = serializers.IntegerField(required=False)
    repair = serializers.CharField(required=False)
    error_code = serializers.CharField(required=False)
    error_message = serializers.CharField(required=False)
    quality_report = serializers.JSONField(required=False, allow_null=True)
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
