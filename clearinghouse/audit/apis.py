from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from clearinghouse.core.apis import paginated

from .selectors import audit_event_extra, audit_event_list


class AuditEventListApi(APIView):
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

    @extend_schema(responses=OutputSerializer(many=True), operation_id="audit_events_list")
    def get(self, request):
        events = audit_event_list(actor=request.user, action=request.query_params.get("action"))
        return paginated(
            queryset=events,
            request=request,
            view=self,
            body=lambda event: {
                **self.OutputSerializer(event).data,
                "extra": audit_event_extra(actor=request.user, event=event),
            },
        )
