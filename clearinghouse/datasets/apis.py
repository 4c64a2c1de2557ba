from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.core.apis import paginated, validated
from clearinghouse.core.errors import ApplicationError, NotFound, ValidationFailed
from clearinghouse.organisations.selectors import membership_active, organisation_directory_get

from .models import DatasetGrant
from .selectors import (
    agreement_accepted,
    agreement_current,
    dataset_get,
    dataset_grant_list,
    dataset_is_owner,
    dataset_list,
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

_TEXT = {"max_length": 10_000, "allow_blank": True}


class SchemaField(serializers.JSONField):
    """A schema as a JSON object, or as JSON/YAML text."""


class DatasetOutputSerializer(serializers.Serializer):
    organisation = serializers.CharField(source="organisation.slug")
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    schema = serializers.JSONField()
    schema_confirmed = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class VersionOutputSerializer(serializers.Serializer):
    """Grantees see this much (not even the row count: an exact count is not differentially private);
    owners additionally get the row count, the report and errors (see `version_body`)."""

    number = serializers.IntegerField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


def version_body(version, *, owner: bool) -> dict:
    body = dict(VersionOutputSerializer(version).data)
    if owner:
        body.update(row_count=version.row_count, source_name=version.source_name, source_format=version.source_format,
                    source_bytes=version.source_bytes, repair=version.repair, error_code=version.error_code,
                    error_message=version.error_message, quality_report=version.quality_report,
                    schema=version.schema)
    return body


class DatasetListRegisterApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetRegisterInput"

        name = serializers.CharField(**_TEXT)
        slug = serializers.CharField(**_TEXT)
        description = serializers.CharField(required=False, default="", **_TEXT)
        schema = SchemaField(required=False, allow_null=True, default=None)

    @extend_schema(responses=DatasetOutputSerializer(many=True), operation_id="datasets_list")
    def get(self, request):
        return paginated(queryset=dataset_list(actor=request.user), serializer_class=DatasetOutputSerializer,
                         request=request, view=self)

    @extend_schema(request=InputSerializer, responses={201: DatasetOutputSerializer}, operation_id="datasets_register")
    def post(self, request):
        membership = membership_active(user=request.user)
        if membership is None:
            raise NotFound("You are not a member of an approved organisation.", code="no_organisation")
        dataset = dataset_register(actor=request.user, organisation=membership.organisation,
                                   **validated(self.InputSerializer, request.data))
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetSchemaInput"

        schema = SchemaField()

    @extend_schema(responses=DatasetOutputSerializer, operation_id="datasets_get")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        body = dict(DatasetOutputSerializer(dataset).data)
        agreement = agreement_current(dataset=dataset)
        body["agreement_version"] = agreement.version if agreement else None
        body["agreement_accepted"] = agreement_accepted(user=request.user, dataset=dataset)
        return Response(body)

    @extend_schema(request=InputSerializer, responses=DatasetOutputSerializer, operation_id="datasets_set_schema")
    def patch(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        dataset = dataset_schema_set(actor=request.user, dataset=dataset, schema=data["schema"])
        return Response(DatasetOutputSerializer(dataset).data)


class VersionListUploadApi(APIView):
    parser_classes = [MultiPartParser, JSONParser]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetUploadInput"

        file = serializers.FileField()
        format = serializers.CharField(required=False, default="", **_TEXT)
        delimiter = serializers.CharField(required=False, default="", trim_whitespace=False, **_TEXT)
        quote = serializers.CharField(required=False, default='"', help_text='" (default), \' or none')
        header = serializers.BooleanField(required=False, default=True)
        repair = serializers.CharField(required=False, default="none", **_TEXT)

    @extend_schema(responses=VersionOutputSerializer(many=True), operation_id="dataset_versions_list")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        owner = dataset_is_owner(actor=request.user, dataset=dataset)
        versions = dataset_version_list(actor=request.user, dataset=dataset)
        return Response({"results": [version_body(v, owner=owner) for v in versions[:200]]})

    @extend_schema(request={"multipart/form-data": InputSerializer}, responses={202: VersionOutputSerializer},
                   operation_id="dataset_versions_upload")
    def post(self, request, organisation: str, slug: str):
        upload = None
        try:
            files = request.FILES  # parsing streams the upload through the encrypting handler
            upload = files.get("file")
            if getattr(request._request, "upload_too_large", False):
                raise ApplicationError("The file is larger than the upload limit.", code="file_too_large")
            dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
            if upload is None:
                raise ValidationFailed("Attach the data file as the multipart field 'file'.", code="file_required")
            data = request.data
            delimiter = data.get("delimiter", "")
            delimiter = "\t" if delimiter in {"\\t", "tab"} else delimiter
            version = dataset_version_create(actor=request.user, dataset=dataset, upload=upload,
                                             fmt=data.get("format", ""), delimiter=delimiter,
                                             quote_char="" if data.get("quote") == "none" else data.get("quote", '"'),
                                             has_header=str(data.get("header", "true")).lower() not in {"false", "0", "no"},
                                             repair=data.get("repair", "none") or "none")
        except Exception:
            if upload is not None and hasattr(upload, "discard"):
                upload.discard()
            raise
        return Response(version_body(version, owner=True), status=status.HTTP_202_ACCEPTED)


class VersionDetailApi(APIView):
    @extend_schema(responses=VersionOutputSerializer, operation_id="dataset_versions_get")
    def get(self, request, organisation: str, slug: str, number: int):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
        return Response(version_body(version, owner=dataset_is_owner(actor=request.user, dataset=dataset)))


class VersionRetryApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DatasetRetryInput"

        repair = serializers.CharField(required=False, allow_null=True, default=None, max_length=100)

    @extend_schema(request=InputSerializer, responses={202: VersionOutputSerializer}, operation_id="dataset_versions_retry")
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

        organisation = serializers.CharField(**_TEXT)
        purpose = serializers.CharField(**_TEXT)

    def _owned(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        if not (dataset_is_owner(actor=request.user, dataset=dataset) or request.user.is_operator):
            raise NotFound("Dataset not found.")
        return dataset

    @extend_schema(responses=GrantOutputSerializer(many=True), operation_id="dataset_grants_list")
    def get(self, request, organisation: str, slug: str):
        dataset = self._owned(request, organisation, slug)
        return paginated(queryset=dataset_grant_list(dataset=dataset), serializer_class=GrantOutputSerializer,
                         request=request, view=self)

    @extend_schema(request=InputSerializer, responses={201: GrantOutputSerializer}, operation_id="dataset_grants_create")
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        grantee = organisation_directory_get(slug=data["organisation"])
        grant = dataset_grant_create(actor=request.user, dataset=dataset, organisation=grantee, purpose=data["purpose"])
        return Response(GrantOutputSerializer(grant).data, status=status.HTTP_201_CREATED)


class GrantRevokeApi(APIView):
    @extend_schema(request=None, responses=GrantOutputSerializer, operation_id="dataset_grants_revoke")
    def post(self, request, grant_id: int):
        grant = DatasetGrant.objects.select_related("dataset__organisation", "organisation").filter(pk=grant_id).first()
        if grant is None or not (dataset_is_owner(actor=request.user, dataset=grant.dataset) or request.user.is_operator):
            raise NotFound("Grant not found.")
        return Response(GrantOutputSerializer(dataset_grant_revoke(actor=request.user, grant=grant)).data)


class AgreementApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementPublishInput"

        text = serializers.CharField(max_length=100_000, allow_blank=True)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementOutput"

        version = serializers.IntegerField()
        text = serializers.CharField()
        created_at = serializers.DateTimeField()

    @extend_schema(responses=OutputSerializer, operation_id="dataset_agreement_get")
    def get(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        agreement = agreement_current(dataset=dataset)
        if agreement is None:
            raise NotFound("This dataset has no data-use agreement.", code="no_agreement")
        body = dict(self.OutputSerializer(agreement).data, accepted=agreement_accepted(user=request.user, dataset=dataset))
        return Response(body)

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer}, operation_id="dataset_agreement_publish")
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        agreement = agreement_publish(actor=request.user, dataset=dataset,
                                      text=validated(self.InputSerializer, request.data)["text"])
        return Response(self.OutputSerializer(agreement).data, status=status.HTTP_201_CREATED)


class AgreementAcceptApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgreementAcceptInput"

        version = serializers.IntegerField(min_value=1)

    @extend_schema(request=InputSerializer, responses={201: None}, operation_id="dataset_agreement_accept")
    def post(self, request, organisation: str, slug: str):
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        data = validated(self.InputSerializer, request.data)
        acceptance = agreement_accept(actor=request.user, dataset=dataset, version=data["version"])
        return Response({"version": acceptance.agreement.version, "accepted_at": acceptance.accepted_at},
                        status=status.HTTP_201_CREATED)
