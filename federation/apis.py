from __future__ import annotations

from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.core.apis import StrictCharField, StrictSlugField, paginated, validated
from clearinghouse.core.parsers import NonFiniteAsNullJSONParser
from clearinghouse.organisations.selectors import organisation_get

from .models import FederatedJob, JobRound, JobState, NodeKeyStatus, ParticipantStatus, Strategy, SuperNodeKey
from .selectors import (
    job_artifact,
    job_artifact_file,
    job_evaluation_shared,
    job_flower_run_id_visible,
    job_get,
    job_list,
    job_my_participation,
    job_participants,
    job_report_shared,
    job_round_members_visible,
    job_round_record,
    job_rounds,
    job_rounds_completed,
    published_model_file,
    published_model_guarantee,
    published_models,
    supernode_key_get,
    supernode_key_list,
)
from .services import (
    job_callback_authenticate,
    job_cancel,
    job_create,
    job_event_record,
    job_model_publish,
    job_participation_decide,
    job_privacy_preview,
    job_schedule,
    supernode_key_add,
    supernode_key_revoke,
)


def round_body(r: JobRound, *, actor) -> dict:
    record = job_round_record(job_round=r)
    return {
        "round": r.number,
        "accuracy": r.accuracy,
        "macro_f1": r.macro_f1,
        "loss": r.loss,
        "clients_trained": r.clients_trained,
        "bytes_sent": r.bytes_sent,
        "bytes_received": r.bytes_received,
        "seconds": r.seconds,
        "clients": [entry.to_json() for entry in job_round_members_visible(actor=actor, record=record)],
        "dropouts": [dropout.to_json() for dropout in record.dropouts],
        "flower_overhead_seconds": record.flower_overhead_seconds,
    }


def job_body(job: FederatedJob, *, actor, detail: bool = False) -> dict:
    body = {
        "id": job.pk,
        "uid": str(job.uid),
        "url": reverse("api:federated_job", args=[job.pk]),
        "name": job.name,
        "state": job.state,
        "reason": job.reason,
        "base_model": job.base_model,
        "task": {"text_column": job.text_column, "label_column": job.label_column, "labels": job.labels},
        "strategy": job.strategy,
        "num_rounds": job.num_rounds,
        "min_clients": job.min_clients,
        "settings": job.settings,
        "privacy": None
        if not job.is_private
        else {"epsilon": job.dp_epsilon, "delta": job.dp_delta, "max_grad_norm": job.dp_max_grad_norm},
        "created_at": job.created_at,
        "scheduled_at": job.scheduled_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        # Counted by the list's query; a job just returned by a service is counted here.
        "rounds_completed": job_rounds_completed(job=job),
    }
    if detail:
        body["participants"] = [
            {
                "organisation": p.organisation.slug,
                "status": p.status,
                "data_description": p.data_description,
                "dataset": f"{p.dataset.organisation.slug}/{p.dataset.slug}" if p.dataset else None,
                "decided_at": p.decided_at,
            }
            for p in job_participants(job=job)
        ]
        mine = job_my_participation(actor=actor, job=job)
        body["my_participation"] = mine.status if mine else None
        body["final_evaluation"] = job_evaluation_shared(job.final_evaluation)
        artifact = job_artifact(job=job)
        body["artifact"] = (
            None
            if artifact is None
            else {
                "size": artifact.size,
                "sha256": artifact.sha256,
                "created_at": artifact.created_at,
                "download_url": reverse("api:federated_job_artifact", args=[job.pk]),
                "report": job_report_shared(artifact.report),
                "published_at": artifact.published_at,
            }
        )
        body["flower_run_id"] = job_flower_run_id_visible(actor=actor, job=job)
    return body


class JobTaskOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "FederatedJobTask"

    text_column = serializers.CharField()
    label_column = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField())


class JobPrivacySerializer(serializers.Serializer):
    """A private job's target: every participating dataset's rows are (ε, δ)-DP in the model."""

    class Meta:
        ref_name = "FederatedJobPrivacy"

    epsilon = serializers.FloatField(help_text="Target ε per participating dataset (> 0).")
    delta = serializers.FloatField(help_text="δ per participating dataset (0 < δ < 1/rows).")
    max_grad_norm = serializers.FloatField(
        required=False, default=1.0, help_text="DP-SGD's per-example clipping norm C (> 0)."
    )


class JobOutputSerializer(serializers.Serializer):
    """`job_body`: a job as lists show it."""

    class Meta:
        ref_name = "FederatedJobOutput"

    id = serializers.IntegerField()
    uid = serializers.UUIDField()
    url = serializers.CharField()
    name = serializers.CharField()
    state = serializers.ChoiceField(choices=JobState.choices)
    reason = serializers.CharField()
    base_model = serializers.CharField()
    task = JobTaskOutputSerializer()
    strategy = serializers.ChoiceField(choices=Strategy.values)
    num_rounds = serializers.IntegerField()
    min_clients = serializers.IntegerField()
    settings = serializers.DictField()
    privacy = JobPrivacySerializer(
        allow_null=True, help_text="A private job's DP-SGD target; null: trained without DP."
    )
    created_at = serializers.DateTimeField()
    scheduled_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    rounds_completed = serializers.IntegerField()


class JobParticipantOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "FederatedJobParticipant"

    organisation = serializers.CharField()
    status = serializers.ChoiceField(choices=ParticipantStatus.choices)
    data_description = serializers.CharField()
    dataset = serializers.CharField(allow_null=True, help_text="'owner/slug' of a registered dataset.")
    decided_at = serializers.DateTimeField(allow_null=True)


class JobArtifactOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "FederatedJobArtifact"

    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()
    download_url = serializers.CharField()
    report = serializers.JSONField()
    published_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When an operator published the model to the whole consortium (DP models only).",
    )


class JobDetailOutputSerializer(JobOutputSerializer):
    """`job_body(detail=True)`: one job with its participants and model."""

    class Meta:
        ref_name = "FederatedJobDetailOutput"

    participants = JobParticipantOutputSerializer(many=True)
    my_participation = serializers.ChoiceField(
        choices=ParticipantStatus.choices,
        allow_null=True,
        help_text="Your organisation's answer, if it is invited.",
    )
    final_evaluation = serializers.JSONField(allow_null=True)
    artifact = JobArtifactOutputSerializer(allow_null=True)
    flower_run_id = serializers.CharField(allow_null=True, help_text="Operators only; null for others.")


class RoundOutputSerializer(serializers.Serializer):
    """`round_body`: one round's metrics as the ServerApp reported them."""

    class Meta:
        ref_name = "FederatedJobRoundOutput"

    round = serializers.IntegerField()
    accuracy = serializers.FloatField(allow_null=True)
    macro_f1 = serializers.FloatField(allow_null=True)
    loss = serializers.FloatField(allow_null=True)
    clients_trained = serializers.IntegerField()
    bytes_sent = serializers.IntegerField()
    bytes_received = serializers.IntegerField()
    seconds = serializers.FloatField()
    clients = serializers.ListField(
        child=serializers.JSONField(), help_text="Per-member metrics: your own organisation's members only."
    )
    dropouts = serializers.ListField(child=serializers.JSONField())
    flower_overhead_seconds = serializers.FloatField(allow_null=True)


class JobListCreateApi(APIView):
    class ParticipantSerializer(serializers.Serializer):
        organisation = StrictSlugField()
        dataset = StrictCharField(
            required=False,
            allow_null=True,
            default=None,
            help_text="A registered dataset as 'owner/slug' (optional).",
        )
        data_description = StrictCharField(required=False, allow_blank=True, default="", max_length=5000)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FederatedJobInput"

        name = StrictCharField(max_length=200)
        base_model = StrictCharField(required=False, default="minilm-l6", max_length=500)
        text_column = StrictCharField(max_length=200)
        label_column = StrictCharField(max_length=200)
        labels = serializers.ListField(child=StrictCharField(max_length=200), min_length=2, max_length=1000)
        strategy = serializers.ChoiceField(choices=Strategy.values, default=Strategy.FEDAVG)
        num_rounds = serializers.IntegerField(default=3, min_value=1, max_value=1000)
        min_clients = serializers.IntegerField(default=2, min_value=1, max_value=1000)
        settings = serializers.DictField(
            required=False,
            default=dict,
            help_text='Further run-config values, e.g. {"lora-r": 8, "batch-size": 16}.',
        )
        participants = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=1000)
        privacy = serializers.DictField(
            required=False,
            allow_null=True,
            default=None,
            help_text="A private job: {epsilon, delta, max_grad_norm}, the DP-SGD target per participating "
            "dataset, priced and debited from each dataset's budget at schedule. Omitted: not private.",
        )

    @extend_schema(responses=JobOutputSerializer(many=True), operation_id="federated_jobs_list")
    def get(self, request):
        return paginated(
            queryset=job_list(actor=request.user),
            body=lambda job: job_body(job, actor=request.user),
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: JobDetailOutputSerializer},
        operation_id="federated_jobs_create",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        data["participants"] = [validated(self.ParticipantSerializer, p) for p in data["participants"]]
        job = job_create(actor=request.user, **data)
        return Response(job_body(job, actor=request.user, detail=True), status=201)


class JobDetailApi(APIView):
    @extend_schema(responses=JobDetailOutputSerializer, operation_id="federated_jobs_get")
    def get(self, request, job_id: int):
        return Response(job_body(job_get(actor=request.user, job_id=job_id), actor=request.user, detail=True))


class JobPlanOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "FederatedJobDpPlan"

    target_epsilon = serializers.FloatField()
    epsilon = serializers.FloatField(help_text="The accountant's ε for (σ, q, steps) at δ (≤ the target).")
    delta = serializers.FloatField()
    noise_multiplier = serializers.FloatField(help_text="σ: the Gaussian noise is σ·C.")
    max_grad_norm = serializers.FloatField(help_text="C: each example's gradient is clipped to it.")
    sample_rate = serializers.FloatField(help_text="q: Poisson sampling rate (batch size / training rows).")
    steps = serializers.IntegerField(help_text="DP-SGD steps over all rounds.")
    batch_size = serializers.IntegerField(allow_null=True)
    accountant = serializers.CharField()


class JobRefusalOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "FederatedJobPriceRefusal"

    code = serializers.CharField()
    detail = serializers.CharField()


class JobPriceOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "FederatedJobParticipantPrice"

    organisation = serializers.CharField()
    status = serializers.ChoiceField(choices=ParticipantStatus.choices)
    dataset = serializers.CharField(allow_null=True, help_text="'owner/slug' of a registered dataset.")
    plan = JobPlanOutputSerializer(allow_null=True, help_text="Null: not private, or refused.")
    debited = serializers.BooleanField(help_text="Whether the dataset's budget paid it (at schedule).")
    refusal = JobRefusalOutputSerializer(allow_null=True, help_text="Why it cannot take part as it is.")


class JobPrivacyOutputSerializer(serializers.Serializer):
    """`job_privacy_preview`."""

    class Meta:
        ref_name = "FederatedJobPrivacyPreview"

    private = serializers.BooleanField()
    epsilon = serializers.FloatField(allow_null=True)
    delta = serializers.FloatField(allow_null=True)
    max_grad_norm = serializers.FloatField(allow_null=True)
    participants = JobPriceOutputSerializer(many=True)


class JobPrivacyApi(APIView):
    """What a private job costs each participating dataset (σ, steps, q, the accountant's ε) before it
    is scheduled and debited, or why a participant cannot take part; for the job's viewers."""

    @extend_schema(responses=JobPrivacyOutputSerializer, operation_id="federated_jobs_privacy")
    def get(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        return Response(job_privacy_preview(job=job))


class JobParticipationApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "JobParticipationInput"

        decision = serializers.ChoiceField(choices=["accept", "decline"])
        dataset = StrictCharField(required=False, allow_null=True, default=None)
        data_description = StrictCharField(required=False, allow_null=True, default=None, max_length=5000)

    @extend_schema(
        request=InputSerializer,
        responses=JobDetailOutputSerializer,
        operation_id="federated_jobs_participation",
    )
    def post(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        job_participation_decide(actor=request.user, job=job, **validated(self.InputSerializer, request.data))
        return Response(job_body(job, actor=request.user, detail=True))


class JobScheduleApi(APIView):
    @extend_schema(
        request=None, responses={202: JobDetailOutputSerializer}, operation_id="federated_jobs_schedule"
    )
    def post(self, request, job_id: int):
        job = job_schedule(actor=request.user, job=job_get(actor=request.user, job_id=job_id))
        return Response(job_body(job, actor=request.user, detail=True), status=202)


class JobCancelApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "JobCancelInput"

        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(
        request=InputSerializer, responses=JobDetailOutputSerializer, operation_id="federated_jobs_cancel"
    )
    def post(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        job = job_cancel(actor=request.user, job=job, **validated(self.InputSerializer, request.data))
        return Response(job_body(job, actor=request.user, detail=True))


# A model download's one response: the adapter file (safetensors), as an attachment.
ADAPTER_FILE = {
    (200, "application/octet-stream"): OpenApiResponse(
        response=OpenApiTypes.BINARY, description="The model adapter (safetensors)."
    )
}


class JobPublishApi(APIView):
    @extend_schema(
        request=None,
        responses=JobDetailOutputSerializer,
        operation_id="federated_jobs_publish",
        description="Operators publish a private job's model to every member organisation (409 "
        "`model_not_private` for a model trained without DP on every participant's data, `no_artifact`, "
        "`model_published`).",
    )
    def post(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        job_model_publish(actor=request.user, job=job)
        return Response(job_body(job, actor=request.user, detail=True))


class PublishedModelOutputSerializer(serializers.Serializer):
    """A model published to the consortium, with the privacy loss each participant's data has in it."""

    class Meta:
        ref_name = "PublishedModelOutput"

    id = serializers.IntegerField()
    job = serializers.UUIDField(help_text="The federated job that trained it.")
    name = serializers.CharField()
    base_model = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField())
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    published_at = serializers.DateTimeField()
    guarantee = serializers.DictField(
        child=serializers.DictField(),
        help_text="Per participating organisation: target_epsilon, epsilon, delta, accountant (DP-SGD).",
    )
    download_url = serializers.CharField()


def published_model_body(model) -> dict:
    return {
        "id": model.pk,
        "job": model.job.uid,
        "name": model.job.name,
        "base_model": model.job.base_model,
        "labels": model.job.labels,
        "size": model.size,
        "sha256": model.sha256,
        "published_at": model.published_at,
        "guarantee": published_model_guarantee(model),
        "download_url": reverse("api:published_model_download", args=[model.pk]),
    }


class PublishedModelListApi(APIView):
    @extend_schema(responses=PublishedModelOutputSerializer(many=True), operation_id="models_list")
    def get(self, request):
        return paginated(
            queryset=published_models(actor=request.user),
            request=request,
            view=self,
            body=published_model_body,
        )


class PublishedModelDownloadApi(APIView):
    @extend_schema(responses=ADAPTER_FILE, operation_id="models_download")
    def get(self, request, model_id: int):
        file, name = published_model_file(actor=request.user, model_id=model_id)
        return FileResponse(file, as_attachment=True, filename=name, content_type="application/octet-stream")


class JobRoundsApi(APIView):
    @extend_schema(responses=RoundOutputSerializer(many=True), operation_id="federated_jobs_rounds")
    def get(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        return paginated(
            queryset=job_rounds(job=job),
            body=lambda r: round_body(r, actor=request.user),
            request=request,
            view=self,
        )


class JobArtifactApi(APIView):
    @extend_schema(responses=ADAPTER_FILE, operation_id="federated_jobs_artifact")
    def get(self, request, job_id: int):
        job = job_get(actor=request.user, job_id=job_id)
        file, name = job_artifact_file(actor=request.user, job=job)
        return FileResponse(file, as_attachment=True, filename=name, content_type="application/octet-stream")


class JobEventApi(APIView):
    """The ServerApp's callback: one event per request, authenticated by the job's own bearer token
    (written for the ServerApp only; never a user's token)."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    class InputSerializer(serializers.Serializer):
        """What the ServerApp reports (federation.flower.reporting); a round's whole record is kept."""

        class Meta:
            ref_name = "FederatedJobEventInput"

        event = serializers.ChoiceField(choices=["started", "round", "finished", "failed"])
        job_id = StrictCharField(required=False, allow_blank=True)
        time = serializers.DateTimeField(required=False)
        round = serializers.IntegerField(
            required=False, min_value=1, max_value=100_000, help_text="Round events: the round's number."
        )
        evaluate = serializers.DictField(required=False, help_text="Round events: accuracy, macro_f1, loss.")
        clients_trained = serializers.IntegerField(
            required=False, allow_null=True, min_value=0, max_value=2**31 - 1
        )
        bytes_sent = serializers.IntegerField(
            required=False, allow_null=True, min_value=0, max_value=2**63 - 1
        )
        bytes_received = serializers.IntegerField(
            required=False, allow_null=True, min_value=0, max_value=2**63 - 1
        )
        round_seconds = serializers.FloatField(required=False, allow_null=True, min_value=0)
        clients = serializers.ListField(
            child=serializers.DictField(), required=False, help_text="Round events: per-client metrics."
        )
        dropouts = serializers.ListField(child=serializers.DictField(), required=False)
        final_evaluation = serializers.DictField(
            required=False, allow_null=True, help_text="Finished events."
        )
        reason = StrictCharField(required=False, allow_blank=True, help_text="Failed events.")

    # Kept as validated (numbers); the rest of the record is stored as sent (the parser has made it
    # storable: no NUL, NaN/Infinity as null).
    TYPED_FIELDS = ("round", "clients_trained", "bytes_sent", "bytes_received", "round_seconds")
    # The ServerApp writes Python's json: NaN for a metric no client reported.
    parser_classes = (NonFiniteAsNullJSONParser,)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FederatedJobEventOutput"

        state = serializers.ChoiceField(choices=JobState.choices)

    @extend_schema(
        request=InputSerializer,
        responses=OutputSerializer,
        operation_id="federated_jobs_event",
        description="The ServerApp's callback, authenticated by `Authorization: Bearer <job token>` "
        "(the job's own token, never a user's).",
    )
    def post(self, request, job_id: int):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        job_callback_authenticate(job_id=job_id, token=token)  # who sends it first, then what was sent
        data = validated(self.InputSerializer, request.data)
        event = {**request.data, **{name: data[name] for name in self.TYPED_FIELDS if name in data}}
        job = job_event_record(job_id=job_id, token=token, event=event)
        return Response({"state": job.state})


class SuperNodeKeyOutputSerializer(serializers.Serializer):
    """`key_body`."""

    class Meta:
        ref_name = "SuperNodeKeyOutput"

    id = serializers.IntegerField()
    name = serializers.CharField()
    fingerprint = serializers.CharField()
    status = serializers.ChoiceField(choices=NodeKeyStatus.choices)
    node_id = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    public_key = serializers.CharField()


def key_body(key: SuperNodeKey) -> dict:
    return {
        "id": key.pk,
        "name": key.name,
        "fingerprint": key.fingerprint,
        "status": key.status,
        "node_id": key.node_id or None,
        "error": key.error or None,
        "created_at": key.created_at,
        "public_key": key.public_key,
    }


class SuperNodeKeyListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SuperNodeKeyInput"

        name = StrictCharField(max_length=100)
        public_key = StrictCharField(max_length=4000, help_text="OpenSSH public key, EC P-384.")

    @extend_schema(responses=SuperNodeKeyOutputSerializer(many=True), operation_id="supernode_keys_list")
    def get(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        return paginated(
            queryset=supernode_key_list(actor=request.user, organisation=organisation),
            body=key_body,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: SuperNodeKeyOutputSerializer},
        operation_id="supernode_keys_add",
    )
    def post(self, request, slug: str):
        organisation = organisation_get(actor=request.user, slug=slug)
        key = supernode_key_add(
            actor=request.user, organisation=organisation, **validated(self.InputSerializer, request.data)
        )
        return Response(key_body(key), status=201)


class SuperNodeKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=SuperNodeKeyOutputSerializer, operation_id="supernode_keys_revoke")
    def post(self, request, key_id: int):
        key = supernode_key_revoke(
            actor=request.user, key=supernode_key_get(actor=request.user, key_id=key_id)
        )
        return Response(key_body(key))
