from __future__ import annotations

from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.core.apis import validated
from clearinghouse.organisations.selectors import organisation_get

from .models import FederatedJob, JobRound, Strategy, SuperNodeKey
from .selectors import (
    job_artifact_file,
    job_get,
    job_list,
    job_my_participation,
    job_participants,
    job_rounds,
    supernode_key_get,
    supernode_key_list,
)
from .services import (
    job_cancel,
    job_create,
    job_event_record,
    job_participation_decide,
    job_schedule,
    supernode_key_add,
    supernode_key_revoke,
)


def round_body(r: JobRound) -> dict:
    return {"round": r.number, "accuracy": r.accuracy, "macro_f1": r.macro_f1, "loss": r.loss,
            "clients_trained": r.clients_trained, "bytes_sent": r.bytes_sent, "bytes_received": r.bytes_received,
            "seconds": r.seconds, "clients": r.record.get("clients", []), "dropouts": r.record.get("dropouts", []),
            "flower_overhead_seconds": r.record.get("flower_overhead_seconds")}


def job_body(job: FederatedJob, *, actor, detail: bool = False) -> dict:
    body = {
        "id": job.pk, "uid": str(job.uid), "url": reverse("api:federated_job", args=[job.pk]), "name": job.name,
        "state": job.state, "reason": job.reason, "base_model": job.base_model,
        "task": {"text_column": job.text_column, "label_column": job.label_column, "labels": job.labels},
        "strategy": job.strategy, "num_rounds": job.num_rounds, "min_clients": job.min_clients,
        "settings": job.settings, "created_at": job.created_at, "scheduled_at": job.scheduled_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
        # Counted by the list's query; a job just returned by a service is counted here.
        "rounds_completed": job.rounds_done if hasattr(job, "rounds_done") else job.rounds.count(),
    }
    if detail:
        body["participants"] = [
            {"organisation": p.organisation.slug, "status": p.status, "data_description": p.data_description,
             "dataset": f"{p.dataset.organisation.slug}/{p.dataset.slug}" if p.dataset else None,
             "decided_at": p.decided_at}
            for p in job_participants(job=job)
        ]
        mine = job_my_participation(actor=actor, job=job)
        body["my_participation"] = mine.status if mine else None
        body["final_evaluation"] = job.final_evaluation
        artifact = getattr(job, "artifact", None)
        body["artifact"] = None if artifact is None else {
            "size": artifact.size, "sha256": artifact.sha256, "created_at": artifact.created_at,
            "download_url": reverse("api:federated_job_artifact", args=[job.pk]), "report": artifact.report}
        body["flower_run_id"] = job.flower_run_id if actor.is_operator else None
    return body


class JobListCreateApi(APIView):
    class ParticipantSerializer(serializers.Serializer):
        organisation = serializers.SlugField()
        dataset = serializers.CharField(required=False, allow_null=True, default=None,
                                        help_text="A registered dataset as 'owner/slug' (optional).")
        data_description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FederatedJobInput"

        name = serializers.CharField(max_length=200)
        base_model = serializers.CharField(required=False, default="minilm-l6", max_length=500)
        text_column = serializers.CharField(max_length=200)
        label_column = serializers.CharField(max_length=200)
        labels = serializers.ListField(child=serializers.CharField(max_length=200), min_length=2, max_length=1000)
        strategy = serializers.ChoiceField(choices=Strategy.values, default=Strategy.FEDAVG)
        num_rounds = serializers.IntegerField(default=3, min_value=1, max_value=1000)
        min_clients = serializers.IntegerField(default=2, min_value=1, max_value=1000)
        settings = serializers.DictField(required=False, default=dict,
                                         help_text="Further run-config values, e.g. {\"lora-r\": 8, \"batch-size\": 16}.")
        participants = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=1000)

    @extend_schema(responses=dict, operation_id="federated_jobs_list")
    def get(self, request):
        return Response({"results": [job_body(j, actor=request.user) for j in job_list(actor=request.user)[:200]]})

    @extend_schema(request=InputSerializer, responses={201: dict}, operation_id="federated_jobs_create")
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        data["participants"] = [validated(self.ParticipantSerializer, p) for p in data["participants"]]
        job = job_create(actor=request.user, **data)
        return Response(job_body(job, actor=request.user, detail=True), status=201)


class JobDetailApi(APIView):
    @extend_schema(responses=dict, operation_id="federated_jobs_get")
    def get(self, request, job_id: int):
        return Response(job_body(job_get(actor=request.user, job_id=job_id), actor=request.user, detail=True))


class JobParticipationApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "JobParticipationInput"

        decision = serializers.ChoiceField(choices=["accept", "decline"])
        dataset = serializers.CharField(required=False, allow_null=True, default=None)
        data_description = serializers.CharField(required=False, allow_null=True, default=None, max_length=5000)

    @extend_schema(request=InputSerializer, responses=dict, operation_id="federated_jobs_participation")
    def post(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        job_participation_decide(actor=request.user, job=job, **validated(self.InputSerializer, request.data))
        return Response(job_body(job, actor=request.user, detail=True))


class JobScheduleApi(APIView):
    @extend_schema(request=None, responses={202: dict}, operation_id="federated_jobs_schedule")
    def post(self, request, job_id: int):
        job = job_schedule(actor=request.user, job=job_get(actor=request.user, job_id=job_id))
        return Response(job_body(job, actor=request.user, detail=True), status=202)


class JobCancelApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "JobCancelInput"

        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(request=InputSerializer, responses=dict, operation_id="federated_jobs_cancel")
    def post(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        job = job_cancel(actor=request.user, job=job, **validated(self.InputSerializer, request.data))
        return Response(job_body(job, actor=request.user, detail=True))


class JobRoundsApi(APIView):
    @extend_schema(responses=dict, operation_id="federated_jobs_rounds")
    def get(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        return Response({"results": [round_body(r) for r in job_rounds(job=job)]})


class JobArtifactApi(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(description="safetensors")},
                   operation_id="federated_jobs_artifact")
    def get(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        file, name = job_artifact_file(actor=request.user, job=job)
        return FileResponse(file, as_attachment=True, filename=name, content_type="application/octet-stream")


class JobEventApi(APIView):
    """The ServerApp's callback: one event per request, authenticated by the job's own bearer token
    (written for the ServerApp only; never a user's token)."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(request=dict, responses=dict, operation_id="federated_jobs_event")
    def post(self, request, job_id: int):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        event = request.data if isinstance(request.data, dict) else {}
        job = job_event_record(job_id=job_id, token=token, event=event)
        return Response({"state": job.state})


def key_body(key: SuperNodeKey) -> dict:
    return {"id": key.pk, "name": key.name, "fingerprint": key.fingerprint, "status": key.status,
            "node_id": key.node_id or None, "error": key.error or None, "created_at": key.created_at,
            "public_key": key.public_key}


class SuperNodeKeyListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SuperNodeKeyInput"

        name = serializers.CharField(max_length=100)
        public_key = serializers.CharField(max_length=4000, help_text="OpenSSH public key, EC P-384.")

    @extend_schema(responses=dict, operation_id="supernode_keys_list")
    def get(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        return Response({"results": [key_body(k) for k in supernode_key_list(actor=request.user, organisation=organisation)]})

    @extend_schema(request=InputSerializer, responses={201: dict}, operation_id="supernode_keys_add")
    def post(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        key = supernode_key_add(actor=request.user, organisation=organisation,
                                **validated(self.InputSerializer, request.data))
        return Response(key_body(key), status=201)


class SuperNodeKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=dict, operation_id="supernode_keys_revoke")
    def post(self, request, key_id: int):
        key = supernode_key_revoke(actor=request.user, key=supernode_key_get(actor=request.user, key_id=key_id))
        return Response(key_body(key))
