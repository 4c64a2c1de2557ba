"""Federated jobs through the API, without a SuperLink: creation and its bad input, participation,
scheduling preconditions, the ServerApp's callback (token, rounds, failure), SuperNode keys and
the model download. The SuperLink side is in test_job_deployment.py."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clearinghouse.audit.models import AuditEvent
from clearinghouse.datasets.services import dataset_grant_create
from federation.models import FederatedJob, JobRound, JobState, SuperNodeKey
from tests.factories import api_client, make_node_key


@pytest.fixture
def operator(world):
    return api_client(world.operator)


def job_payload(**overrides):
    body = {
        "name": "Spam filter",
        "text_column": "SMS",
        "label_column": "Label",
        "labels": ["ham", "spam"],
        "participants": [{"organisation": "org-a"}, {"organisation": "org-b"}],
        "num_rounds": 2,
        "min_clients": 2,
        "settings": {"batch-size": 8, "lora-r": 4},
    }
    body.update(overrides)
    return body


def create(operator, **overrides):
    response = operator.post("/api/v1/federated-jobs", job_payload(**overrides), format="json")
    return response


def test_operator_creates_a_draft_and_participants_see_it(world, operator):
    response = create(operator)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "draft"
    assert {p["organisation"]: p["status"] for p in body["participants"]} == {
        "org-a": "invited",
        "org-b": "invited",
    }
    assert AuditEvent.objects.filter(action="federated_job.created", target_id=str(body["id"])).exists()
    # Org A's analyst sees the job (its organisation is invited); C's admin does not.
    assert api_client(world.a.analyst).get(body["url"]).status_code == 200
    from clearinghouse.accounts.models import User

    outsider = api_client(User.objects.get(username="admin_org-c"))
    assert outsider.get(body["url"]).status_code == 404
    assert body["id"] not in [j["id"] for j in outsider.get("/api/v1/federated-jobs").json()["results"]]


@pytest.mark.parametrize(
    "overrides,code",
    [
        ({"base_model": "/nowhere/model"}, "invalid_job_settings"),
        ({"num_rounds": 0}, "invalid"),
        ({"num_rounds": -3}, "invalid"),
        ({"settings": {"learning-rate": -1.0}}, "invalid_job_settings"),
        (
            {"settings": {"callback-url": "http://evil.example"}},
            "invalid_job_settings",
        ),  # not operator-settable
        ({"min_clients": 3}, "invalid_job_settings"),  # more than the invited participants
        ({"labels": ["spam"]}, "invalid"),
        ({"participants": [{"organisation": "org-a"}, {"organisation": "org-a"}]}, "duplicate_participant"),
    ],
)
def test_bad_job_is_refused_with_a_clear_error_and_nothing_is_written(world, operator, overrides, code):
    before = FederatedJob.objects.count()
    response = create(operator, **overrides)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert code in (body["code"], *[c for c in body.get("fields", {})]) or body["code"] == code, body
    assert body["detail"]
    assert FederatedJob.objects.count() == before


def test_unknown_organisation_is_404(world, operator):
    response = create(operator, participants=[{"organisation": "org-a"}, {"organisation": "nobody"}])
    assert response.status_code == 404
    assert FederatedJob.objects.count() == 2  # the world's own jobs only


def test_participant_needs_a_training_grant_for_someone_elses_dataset(world, operator):
    foreign = f"{world.b.organisation.slug}/{world.b.dataset.slug}"
    refused = create(
        operator, participants=[{"organisation": "org-a", "dataset": foreign}, {"organisation": "org-b"}]
    )
    assert refused.status_code == 403 and refused.json()["code"] == "training_grant_required"
    # Its own dataset needs no grant; a training grant from B makes B's dataset usable by A.
    dataset_grant_create(
        actor=world.b.steward, dataset=world.b.dataset, organisation=world.a.organisation, purpose="training"
    )
    assert (
        create(
            operator, participants=[{"organisation": "org-a", "dataset": foreign}, {"organisation": "org-b"}]
        ).status_code
        == 201
    )


def test_participation_is_decided_by_the_participants_admin(world, operator):
    job = create(operator).json()
    url = f"{job['url']}/participation"
    assert api_client(world.a.analyst).post(url, {"decision": "accept"}, format="json").status_code == 403
    accepted = api_client(world.a.admin).post(
        url, {"decision": "accept", "data_description": "SMS inbox export"}, format="json"
    )
    assert accepted.status_code == 200
    mine = {p["organisation"]: p for p in accepted.json()["participants"]}["org-a"]
    assert mine["status"] == "accepted" and mine["data_description"] == "SMS inbox export"
    assert api_client(world.b.admin).post(url, {"decision": "maybe"}, format="json").status_code == 400


def test_schedule_needs_a_superlink_enough_participants_and_registered_nodes(world, operator, settings):
    job = create(operator).json()
    schedule = f"{job['url']}/schedule"
    settings.FLOWER_SUPERLINK = ""
    assert operator.post(schedule).json()["code"] == "federation_disabled"
    settings.FLOWER_SUPERLINK = "127.0.0.1:1"
    response = operator.post(schedule)
    assert response.status_code == 409 and response.json()["code"] == "too_few_participants"
    for admin in (world.a.admin, world.b.admin):
        api_client(admin).post(f"{job['url']}/participation", {"decision": "accept"}, format="json")
    response = operator.post(schedule)
    assert (
        response.status_code == 409 and response.json()["code"] == "no_supernode"
    )  # keys pending, not registered
    SuperNodeKey.objects.update(status="registered", node_id="42")
    assert operator.post(schedule).status_code == 202
    assert FederatedJob.objects.get(pk=job["id"]).state == JobState.SCHEDULED
    # A scheduled job is no longer open to participation changes.
    late = api_client(world.a.admin).post(
        f"{job['url']}/participation", {"decision": "decline"}, format="json"
    )
    assert late.status_code == 409 and late.json()["code"] == "job_not_draft"


def _running_job(world, token: str) -> FederatedJob:
    job = FederatedJob.objects.get(pk=world.a.job_id)
    job.state, job.flower_run_id = JobState.RUNNING, "123"
    job.callback_token_hash = hashlib.sha256(token.encode()).hexdigest()
    job.save()
    return job


def test_callback_records_rounds_with_the_jobs_token_only(world):
    job = _running_job(world, "s3cret-token")
    url = f"/api/v1/federated-jobs/{job.pk}/events"
    client = api_client(None)
    event = {
        "event": "round",
        "round": 1,
        "clients_trained": 2,
        "bytes_sent": 1000,
        "bytes_received": 900,
        "round_seconds": 3.5,
        "evaluate": {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.3},
        "clients": [{"organisation": "org-a", "train": {"train-loss": 0.4}}],
    }
    assert client.post(url, event, format="json").status_code == 403
    client.credentials(HTTP_AUTHORIZATION="Bearer wrong")
    assert client.post(url, event, format="json").status_code == 403
    client.credentials(HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert client.post(url, event, format="json").status_code == 200
    assert (
        client.post(url, {**event, "evaluate": {"accuracy": 0.95}}, format="json").status_code == 200
    )  # a retry
    rounds = JobRound.objects.filter(job=job)
    assert rounds.count() == 1 and rounds.get().accuracy == 0.95
    listed = api_client(world.a.analyst).get(f"/api/v1/federated-jobs/{job.pk}/rounds").json()["results"]
    assert listed[0]["round"] == 1 and listed[0]["clients"][0]["organisation"] == "org-a"
    assert client.post(url, {"event": "round", "round": "x"}, format="json").status_code == 400
    assert (
        client.post(
            url, {"event": "failed", "reason": "round 2: only 1 of 3 clients"}, format="json"
        ).status_code
        == 200
    )
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "only 1 of 3" in job.reason
    # Events after the end change nothing.
    client.post(url, {**event, "round": 2}, format="json")
    assert JobRound.objects.filter(job=job).count() == 1


def test_supernode_keys_must_be_p384_openssh_and_unique(world):
    admin = api_client(world.a.admin)
    url = f"/api/v1/organisations/{world.a.organisation.slug}/supernode-keys"
    rsa_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    for bad in ("not a key", rsa_key, ""):
        response = admin.post(url, {"name": "bad", "public_key": bad}, format="json")
        assert response.status_code == 400, response.json()
    existing = SuperNodeKey.objects.get(pk=world.a.node_key_id)
    duplicate = admin.post(url, {"name": "again", "public_key": existing.public_key}, format="json")
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "duplicate_key"
    key = make_node_key(admin=world.a.admin, name="gpu-2")
    assert key.status == "pending" and len(key.fingerprint) == 64
    assert [k["name"] for k in admin.get(url).json()["results"]] == ["gpu-1", "gpu-2"]


def test_model_download_is_for_accepted_participants(world):
    url = f"/api/v1/federated-jobs/{world.a.job_id}/artifact"
    response = api_client(world.a.analyst).get(url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"model-bytes"
    assert api_client(world.b.admin).get(url).status_code == 404
    assert api_client(world.operator).get(url).status_code == 403


def test_finalize_takes_the_final_evaluation_from_the_report_when_no_round_event_arrived(world, media_root):
    """A run whose round events were all lost still ends with its pooled evaluation: the ServerApp's
    report.json carries it as `final_evaluation`."""
    import json

    from federation.services import job_finalize, job_workdir

    job = _running_job(world, "t0ken")
    assert job.final_evaluation is None
    out = job_workdir(job) / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter.safetensors").write_bytes(b"adapter")
    evaluation = {"accuracy": 0.97, "macro_f1": 0.93, "loss": 0.1}
    (out / "report.json").write_text(
        json.dumps({"status": "succeeded", "final_evaluation": evaluation, "rounds": [{"round": 1}]})
    )
    job_finalize(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert job.final_evaluation == evaluation
