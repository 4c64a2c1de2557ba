"""A federated job end to end through the clearinghouse, on loopback: SuperLink (TLS, SuperNode
authentication) and SuperNodes as subprocesses, keys registered through the API by a real Celery
worker on the `federation` queue, the job created, accepted and scheduled through the API, per-round
metrics arriving by the ServerApp's HTTP callback at a live server, and the model stored.
Slow: ``pytest -m slow tests/federation``."""

from __future__ import annotations

import io
import time

import pytest
from celery.contrib.testing.worker import start_worker

from clearinghouse.accounts.models import User
from clearinghouse.celery import app
from federation.flower.control import SuperLinkControl
from federation.flower.local import LocalFederation
from federation.flower.security import make_supernode_keypair, make_tls_material
from federation.models import FederatedJob, JobRound, JobState, SuperNodeKey
from federation.services import jobs_reconcile
from tests.factories import api_client, build_world
from tests.federation.conftest import SMS_SPAM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SMS_SPAM.exists(), reason=f"{SMS_SPAM} not available"),
]

ORGS = ("org-a", "org-b", "org-c")


def wait_until(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


@pytest.fixture
def consortium(transactional_db, live_server, media_root, settings, tmp_path, tiny_model_dir):
    tls = make_tls_material(tmp_path / "tls")
    with LocalFederation(tmp_path / "fed", tls=tls.as_dict(), node_auth=True) as fed:
        fed.start_superlink()
        settings.FLOWER_SUPERLINK = fed.address
        settings.FLOWER_ROOT_CERTIFICATES = str(tls.ca)
        settings.FLOWER_SHARED_DIR = tmp_path / "shared"
        settings.FLOWER_CALLBACK_URL_BASE = live_server.url
        world = build_world()
        SuperNodeKey.objects.all().delete()  # the world's keys name no running node: the test registers its own
        admins = {
            "org-a": world.a.admin,
            "org-b": world.b.admin,
            "org-c": User.objects.get(username="admin_org-c"),
        }
        with start_worker(
            app, pool="solo", perform_ping_check=False, queues=["federation"], shutdown_timeout=30
        ):
            yield fed, world, admins, tmp_path


def start_members(fed, admins, tmp_path, **node_config):
    """Registers each organisation's SuperNode key through the API and starts its node on a third of
    the first 150 SMS messages; returns each organisation's data file."""
    files = {}
    lines = SMS_SPAM.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:151]
    for i, org in enumerate(ORGS):
        private, public = make_supernode_keypair(tmp_path / "keys", org)
        response = api_client(admins[org]).post(
            f"/api/v1/organisations/{org}/supernode-keys",
            {"name": "gpu-main", "public_key": public.read_text()},
            format="json",
        )
        assert response.status_code == 201, response.json()
        key_id = response.json()["id"]
        key = wait_until(
            lambda key_id=key_id: SuperNodeKey.objects.filter(
                pk=key_id, status__in=["registered", "failed"]
            ).first(),
            60,
            f"registration of {org}'s key",
        )
        assert key.status == "registered", key.error
        part = tmp_path / f"{org}.tsv"
        part.write_text("\n".join([header, *rows[i::3]]) + "\n", encoding="utf-8")
        files[org] = part
        fed.add_supernode(
            org,
            {
                "data-path": str(part),
                "text-column": "SMS",
                "label-column": "Label",
                "organisation": org,
                **node_config,
            },
            threads=1,
            auth_private_key=private,
        )
        # The node id the SuperLink gave the registered key is the id the node runs under.
        assert str(fed.node_id(org)) == key.node_id
    return files


def new_job(operator, tiny_model_dir, **overrides):
    body = {
        "name": "SMS spam",
        "base_model": str(tiny_model_dir),
        "text_column": "SMS",
        "label_column": "Label",
        "labels": ["ham", "spam"],
        "participants": [{"organisation": o} for o in ORGS],
        "num_rounds": 2,
        "min_clients": 2,
        "settings": {
            "batch-size": 16,
            "max-length": 32,
            "learning-rate": 0.01,
            "connect-timeout": 30.0,
            "round-timeout": 120.0,
        },
    }
    body.update(overrides)
    response = operator.post("/api/v1/federated-jobs", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def wait_for_end(fed, job, timeout: float = 300):
    """The job's final state (succeeded or failed), waiting up to `timeout` seconds."""

    def finished():
        state = FederatedJob.objects.get(pk=job["id"]).state
        return state if state in (JobState.SUCCEEDED, JobState.FAILED) else None

    return wait_until(
        finished,
        timeout,
        f"job {job['id']} to finish",
        lambda: fed.log_text("superlink")[-3000:] + FederatedJob.objects.get(pk=job["id"]).reason,
    )


def accept_all(job, admins):
    for org in ORGS:
        response = api_client(admins[org]).post(
            f"{job['url']}/participation", {"decision": "accept"}, format="json"
        )
        assert response.status_code == 200, response.json()


def test_job_scheduled_through_the_api_runs_and_returns_metrics_and_model(consortium, tiny_model_dir):
    fed, world, admins, tmp_path = consortium
    start_members(fed, admins, tmp_path)
    operator = api_client(world.operator)
    job = new_job(operator, tiny_model_dir)
    accept_all(job, admins)
    assert operator.post(f"{job['url']}/schedule").status_code == 202

    state = wait_for_end(fed, job)
    done = FederatedJob.objects.get(pk=job["id"])
    assert state == JobState.SUCCEEDED, done.reason
    assert done.flower_run_id

    rounds = list(JobRound.objects.filter(job=done).order_by("number"))
    assert [r.number for r in rounds] == [1, 2]
    assert all(r.clients_trained == 3 and 0.0 <= r.accuracy <= 1.0 and r.bytes_sent > 0 for r in rounds)
    assert {c["organisation"] for c in rounds[0].record["clients"]} == set(ORGS)
    body = api_client(admins["org-b"]).get(job["url"]).json()
    assert body["state"] == "succeeded" and body["artifact"]["report"]["status"] == "succeeded"
    assert body["final_evaluation"]["accuracy"] is not None

    download = api_client(world.a.analyst).get(f"{job['url']}/artifact")
    assert download.status_code == 200
    from safetensors.torch import load

    tensors = load(b"".join(download.streaming_content))
    assert tensors and all("lora" in name or "classifier" in name for name in tensors)
    # Nothing is left running on the SuperLink, and the job's token and outputs are gone from the shared area.
    assert jobs_reconcile()["changed"] == 0
    assert not (tmp_path / "shared" / "jobs" / job["uid"]).exists()


def test_cancel_stops_the_run_and_a_lost_run_fails(consortium, tiny_model_dir, settings):
    fed, world, admins, tmp_path = consortium
    start_members(fed, admins, tmp_path)
    operator = api_client(world.operator)
    job = new_job(operator, tiny_model_dir, num_rounds=500)
    accept_all(job, admins)
    operator.post(f"{job['url']}/schedule")
    running = wait_until(
        lambda: FederatedJob.objects.filter(pk=job["id"], state=JobState.RUNNING).first(),
        120,
        "the job to run",
    )
    wait_until(lambda: JobRound.objects.filter(job=running).exists(), 180, "a first round")
    response = operator.post(f"{job['url']}/cancel", {"reason": "wrong labels"}, format="json")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    control = SuperLinkControl(
        address=fed.address, root_certificates=settings.FLOWER_ROOT_CERTIFICATES, home=tmp_path / "probe-home"
    )
    wait_until(lambda: not control.runs()[running.flower_run_id].active, 60, "the run to stop")
    assert control.runs()[running.flower_run_id].status == "finished:stopped"
    jobs_reconcile()
    assert FederatedJob.objects.get(pk=job["id"]).state == JobState.CANCELLED

    # A job whose run the SuperLink does not know (e.g. its database was lost) is failed, not left running.
    lost = FederatedJob.objects.get(pk=world.a.job_id)
    lost.state, lost.flower_run_id = JobState.RUNNING, "987654321"
    lost.save()
    jobs_reconcile()
    lost.refresh_from_db()
    assert lost.state == JobState.FAILED and "no record of run 987654321" in lost.reason


SMS_SCHEMA = {
    "columns": [
        {"name": "Label", "type": "categorical", "categories": ["ham", "spam"]},
        {"name": "SMS", "type": "text", "max_length": 1000},
    ]
}


def register_dataset(steward, org: str, data: bytes) -> None:
    """The member's file registered as its dataset `<org>/sms` through the API (ingested by the real
    pipeline), with an approximate-DP budget that allows DP training and an allocation to itself."""
    from clearinghouse.datasets.models import DatasetVersion
    from clearinghouse.datasets.services import dataset_version_ingest

    client = api_client(steward)
    created = client.post(
        "/api/v1/datasets", {"name": "SMS", "slug": "sms", "schema": SMS_SCHEMA}, format="json"
    )
    assert created.status_code == 201, created.json()
    upload = client.post(
        f"/api/v1/datasets/{org}/sms/versions",
        {"file": io.BytesIO(data), "delimiter": "tab", "quote": "none"},
        format="multipart",
    )
    assert upload.status_code == 202, upload.json()
    version = DatasetVersion.objects.get(dataset__organisation__slug=org, dataset__slug="sms", number=1)
    assert dataset_version_ingest(version_id=version.pk).status == "ready"
    base = f"/api/v1/datasets/{org}/sms/budget"
    budget = {"measure": "approx", "total": 20.0, "delta_total": 1e-3, "training": "dp"}
    assert client.put(base, budget, format="json").status_code == 200
    allocation = client.put(
        f"{base}/allocations/{org}", {"amount": 20.0, "delta_amount": 1e-3}, format="json"
    )
    assert allocation.status_code == 200, allocation.json()


def test_a_private_job_through_the_api_is_paid_trains_with_dp_sgd_and_is_published(
    consortium, tiny_model_dir
):
    """Issue 13 end to end: members that train DP jobs only (`require-dp`), each on the file it
    registered; the job is priced, paid from both datasets' budgets at schedule, trained with DP-SGD
    by the members (the digest of each local file checked against the registered version), its model
    carries each dataset's guarantee and may be published to the consortium."""
    from clearinghouse.queries.models import LedgerEntry, PrivacyBudget

    fed, world, admins, tmp_path = consortium
    files = start_members(fed, admins, tmp_path, **{"require-dp": "true"})
    stewards = {"org-a": world.a.steward, "org-b": world.b.steward}
    for org, steward in stewards.items():
        register_dataset(steward, org, files[org].read_bytes())
    operator = api_client(world.operator)
    job = new_job(
        operator,
        tiny_model_dir,
        participants=[{"organisation": org} for org in stewards],
        privacy={"epsilon": 8.0, "delta": 1e-3},
    )
    for org in stewards:
        accepted = api_client(admins[org]).post(
            f"{job['url']}/participation", {"decision": "accept", "dataset": f"{org}/sms"}, format="json"
        )
        assert accepted.status_code == 200, accepted.json()
    preview = operator.get(f"{job['url']}/privacy").json()
    assert all(p["plan"] and p["refusal"] is None for p in preview["participants"]), preview
    assert operator.post(f"{job['url']}/schedule").status_code == 202
    paid = LedgerEntry.objects.filter(kind="training", job_uid=job["uid"])
    assert paid.count() == 2 and all(
        PrivacyBudget.objects.get(dataset__organisation__slug=org, dataset__slug="sms").spent > 0
        for org in stewards
    )

    state = wait_for_end(fed, job)
    done = FederatedJob.objects.get(pk=job["id"])
    assert state == JobState.SUCCEEDED, done.reason
    guarantee = api_client(admins["org-b"]).get(job["url"]).json()["artifact"]["report"]["privacy"]
    plans = {p["organisation"]: p["plan"] for p in preview["participants"]}
    assert set(guarantee) == set(stewards)
    for org, shown in guarantee.items():
        assert shown["steps_taken"] == plans[org]["steps"] and shown["epsilon"] == pytest.approx(
            plans[org]["epsilon"]
        )
        assert shown["delta"] == 1e-3 and shown["noise_multiplier"] == pytest.approx(
            plans[org]["noise_multiplier"]
        )
    published = operator.post(f"{job['url']}/publish")
    assert published.status_code == 200, published.json()
    # Every member organisation lists it, with each dataset's (ε, δ); org-c took no part.
    models = api_client(admins["org-c"]).get("/api/v1/models").json()["results"]
    assert [m["job"] for m in models] == [job["uid"]] and set(models[0]["guarantee"]) == set(stewards)
