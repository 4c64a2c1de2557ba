from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.core.apis import StrictCharField, paginated, validated
from clearinghouse.organisations.selectors import membership_of, user_capabilities

from .selectors import api_token_get, api_token_list
from .services import api_token_create, api_token_revoke


class MeApi(APIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MeOutput"

        id = serializers.IntegerField()
        username = serializers.CharField()
        email = serializers.EmailField()
        is_operator = serializers.BooleanField()
        organisation = serializers.CharField(allow_null=True)
        organisation_status = serializers.CharField(allow_null=True)
        role = serializers.CharField(allow_null=True)
        capabilities = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses=OutputSerializer, operation_id="me")
    def get(self, request):
        user = request.user
        membership = membership_of(user=user)
        return Response(
            self.OutputSerializer(
                {
                    "id": user.pk,
                    "username": user.username,
                    "email": user.email,
                    "is_operator": user.is_operator,
                    "organisation": membership.organisation.slug if membership else None,
                    "organisation_status": membership.organisation.status if membership else None,
                    "role": membership.role if membership else None,
                    "capabilities": sorted(user_capabilities(user=user)),
                }
            ).data
        )


class TokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    is_active = serializers.BooleanField()


class TokenListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TokenListCreateInput"

        name = StrictCharField(max_length=1000, allow_blank=True)
        expires_at = serializers.DateTimeField(required=False)

    class CreatedSerializer(TokenOutputSerializer):
        class Meta:
            ref_name = "TokenListCreateCreated"

        token = serializers.CharField(help_text="The secret; shown only in this response.")

    @extend_schema(responses=TokenOutputSerializer(many=True), operation_id="tokens_list")
    def get(self, request):
        return paginated(
            queryset=api_token_list(actor=request.user),
            serializer_class=TokenOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer}, operation_id="tokens_create")
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        token, text = api_token_create(
            actor=request.user, name=data["name"], expires_at=data.get("expires_at")
        )
        body = dict(TokenOutputSerializer(token).data, token=text)
        return Response(body, status=status.HTTP_201_CREATED)


class TokenRevokeApi(APIView):
    @extend_schema(request=None, responses=TokenOutputSerializer, operation_id="tokens_revoke")
    def post(self, request, token_id: int):
        token = api_token_revoke(
            actor=request.user, token=api_token_get(actor=request.user, token_id=token_id)
        )
        return Response(TokenOutputSerializer(token).data)
