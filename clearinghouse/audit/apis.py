from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from clearinghouse.core.apis import ErrorSerializer, paginated, text_field, validated
from clearinghouse.core.schema import ERROR_DESCRIPTIONS

from .selectors import audit_event_extra, audit_event_list


class AuditEventListApi(APIView):
    class InputSerializer(serializers.Serializer):
        """The filters (query parameters), all optional; the selector applies them."""

        class Meta:
            ref_name = "AuditEventListInput"

        action = text_field(
            required=False,
            help_text='An action, exact (`dataset.created`), or a prefix ending in "." or "*" (`dataset.`).',
        )
        actor = text_field(required=False, help_text="The acting user's username, as the events show it.")
        organisation = text_field(required=False, help_text="The organisation's slug, as the events show it.")
        date_from = serializers.DateField(
            required=False, help_text="First day (ISO date, server time zone), included."
        )
        date_to = serializers.DateField(
            required=False,
            help_text="Last day (ISO date), included; before `date_from` is 400 `invalid_date_range`.",
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AuditEventListOutput"

        seq = serializers.IntegerField()
        created_at = serializers.DateTimeField()
        actor = serializers.CharField(source="actor_label")
        organisation = serializers.CharField(source="organisation_label")
        action = serializers.CharField()
        target_type = serializers.CharField()
        target_id = serializers.CharField()
        request_id = serializers.CharField()
        ip = serializers.CharField(allow_null=True)
        extra = serializers.JSONField()
        hash = serializers.CharField()

    @extend_schema(
        parameters=[InputSerializer],
        responses={
            200: OutputSerializer(many=True),
            400: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[400]),
        },
        operation_id="audit_events_list",
    )
    def get(self, request):
        filters = validated(self.InputSerializer, request.query_params)
        events = audit_event_list(
            actor=request.user,
            action=filters.get("action"),
            actor_username=filters.get("actor"),
            organisation_slug=filters.get("organisation"),
            date_from=filters.get("date_from"),
            date_to=filters.get("date_to"),
        )
        return paginated(
            queryset=events,
            request=request,
            view=self,
            body=lambda event: {
                **self.OutputSerializer(event).data,
                "extra": audit_event_extra(actor=request.user, event=event),
            },
        )
