"""Private federated jobs, priced and paid on the one privacy ledger: the price of each
participating dataset against `DpSgdPlan.from_job`, the atomic debit at schedule (all datasets or
none), the run config's `dp-plans`, the refusals (budget, measure, policy, bad privacy loss, δ too
large for the rows), the preview's visibility, and a query release racing a job schedule on one
budget (PostgreSQL)."""

from __future__ import annotations

import io
import json
import os
import threading
import uuid

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import reverse

from clearinghouse.audit.models import AuditEvent
from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.dp.accounting import LedgerComposition, SubsampledGaussianEvent, event_from_dict
from clearinghouse.queries.ledger import BudgetExceeded, allocation_set, budget_debit, budget_set
from clearinghouse.queries.models import (
    BudgetAllocation,
    LedgerEntry,
    PrivacyBudget,
    Query,
    QueryStatus,
)
from federation.flower.settings import JobSettings
from federation.models import FederatedJob, JobParticipant, JobState, ModelArtifact, SuperNodeKey
from federation.services import _run_config, job_finalize, job_schedule
from tests.factories import api_client, build_world, make_dataset
from training.privacy import DpSgdPlan, train_rows

ROWS = 1000  # each dataset's ready version
TRAIN_ROWS = train_rows(ROWS, 0.2)  # 800: the train side that DP-SGD samples from
EPSILON, DELTA = 3.0, 1e-5
BATCH, MAX_STEPS, ROUNDS = 8, 5, 2


# A registered SMS-style table: the private jobs below train on its columns SMS and Label.
SMS_SCHEMA = {
    "columns": [
        {"name": "Label", "type": "categorical", "categories": ["ham", "spam"]},
        {"name": "SMS", "type": "text", "max_length": 100},
    ]
}


def _csv(rows: int) -> bytes:
    return b"Label,SMS\n" + b"".join(f"{('ham', 'spam')[i % 2]},message {i}\n".encode() for i in range(rows))


def _datasets(world):
    """A 1000-row dataset of A and of B, each with an approximate-DP budget (training: dp, the
    default) and an allocation to its own organisation."""
    out = {}
    for side in (world.a, world.b):
        dataset = make_dataset(steward=side.steward, slug="sms", csv=_csv(ROWS), schema=SMS_SCHEMA)
        budget_set(actor=side.steward, dataset=dataset, measure="approx", total=10.0, delta_total=1e-4)
        allocation_set(
            actor=side.steward, dataset=dataset, organisation=side.organisation, amount=5.0, delta_amount=5e-5
        )
        out[side.organisation.slug] = dataset
    return out


@pytest.fixture
def datasets(world):
    return _datasets(world)


@pytest.fixture
def operator(world):
    return api_client(world.operator)


def _payload(**overrides):
    body = {
        "name": "Private spam filter",
        "text_column": "SMS",
        "label_column": "Label",
        "labels": ["ham", "spam"],
        "participants": [{"organisation": "org-a"}, {"organisation": "org-b"}],
        "num_rounds": ROUNDS,
        "min_clients": 2,
        "settings": {"batch-size": BATCH, "max-steps": MAX_STEPS},
        "privacy": {"epsilon": EPSILON, "delta": DELTA},
    }
    body.update(overrides)
    return body


def _accepted_job(world, operator, **overrides) -> dict:
    """A job created through the API and accepted by A and B, each naming its own dataset."""
    response = operator.post("/api/v1/federated-jobs", _payload(**overrides), format="json")
    assert response.status_code == 201, response.json()
    job = response.json()
    for side in (world.a, world.b):
        accepted = api_client(side.admin).post(
            f"{job['url']}/participation",
            {"decision": "accept", "dataset": f"{side.organisation.slug}/sms"},
            format="json",
        )
        assert accepted.status_code == 200, accepted.json()
    return job


@pytest.fixture
def superlink(settings):
    settings.FLOWER_SUPERLINK = "127.0.0.1:1"
    SuperNodeKey.objects.update(status="registered", node_id="42")


def _reference() -> DpSgdPlan:
    return DpSgdPlan.from_job(
        rows=TRAIN_ROWS,
        batch_size=BATCH,
        rounds=ROUNDS,
        target_epsilon=EPSILON,
        delta=DELTA,
        max_grad_norm=1.0,
        local_steps=MAX_STEPS,
    )


def _nothing_debited(datasets) -> None:
    assert not LedgerEntry.objects.filter(kind="training").exists()
    for dataset in datasets.values():
        budget = PrivacyBudget.objects.get(dataset=dataset)
        assert (budget.spent, budget.delta_spent) == (0.0, 0.0)
        assert not BudgetAllocation.objects.filter(budget=budget, spent__gt=0).exists()


def test_pricing_matches_the_accountant_reference(world, datasets, operator):
    job = _accepted_job(world, operator)
    assert job["privacy"] == {"epsilon": EPSILON, "delta": DELTA, "max_grad_norm": 1.0}
    body = operator.get(f"{job['url']}/privacy").json()
    assert body["private"] is True and (body["epsilon"], body["delta"]) == (EPSILON, DELTA)
    reference = _reference()
    assert TRAIN_ROWS == 800 and reference.sample_rate == pytest.approx(BATCH / 800)
    assert reference.steps == ROUNDS * MAX_STEPS
    for entry in body["participants"]:
        assert entry["refusal"] is None and entry["debited"] is False
        plan = entry["plan"]
        assert plan["noise_multiplier"] == pytest.approx(reference.noise_multiplier, rel=1e-12)
        assert plan["epsilon"] == pytest.approx(reference.epsilon, rel=1e-12)
        assert plan["epsilon"] <= EPSILON
        assert (plan["sample_rate"], plan["steps"], plan["accountant"]) == (
            reference.sample_rate,
            reference.steps,
            "pld",
        )
        assert "rows" not in plan  # q states it; the preview does not print the count
    assert {e["dataset"] for e in body["participants"]} == {"org-a/sms", "org-b/sms"}

    # Without max-steps a round is local-epochs × ⌈rows / batch⌉ steps.
    epochs = operator.post(
        "/api/v1/federated-jobs",
        _payload(
            participants=[{"organisation": "org-a", "dataset": "org-a/sms"}],
            min_clients=1,
            settings={"batch-size": 100, "local-epochs": 2, "test-fraction": 0.25},
            privacy={"epsilon": 8.0, "delta": 1e-4, "max_grad_norm": 0.5},
        ),
        format="json",
    ).json()
    api_client(world.a.admin).post(f"{epochs['url']}/participation", {"decision": "accept"}, format="json")
    plan = operator.get(f"{epochs['url']}/privacy").json()["participants"][0]["plan"]
    expected = DpSgdPlan.from_job(
        rows=750,
        batch_size=100,
        rounds=ROUNDS,
        target_epsilon=8.0,
        delta=1e-4,
        max_grad_norm=0.5,
        local_epochs=2,
    )
    assert expected.steps == ROUNDS * 2 * 8
    assert (plan["steps"], plan["max_grad_norm"]) == (expected.steps, 0.5)
    assert plan["noise_multiplier"] == pytest.approx(expected.noise_multiplier, rel=1e-12)


def test_a_private_job_trains_the_dp_recipe_unless_its_settings_say_otherwise(world, datasets, operator):
    """DP linear probing fills what the creator left out, what the creator set stays, and none of it
    changes the price; a non-private job gets no recipe."""
    from federation.services import PRIVATE_JOB_DEFAULTS

    job = FederatedJob.objects.get(uid=_accepted_job(world, operator)["uid"])
    assert job.settings == {"batch-size": BATCH, "max-steps": MAX_STEPS, **PRIVATE_JOB_DEFAULTS}
    assert PRIVATE_JOB_DEFAULTS == {
        "pooling": "mean",
        "head-only": True,
        "optimizer": "sgd",
        "learning-rate": 10.0,
    }
    lora = operator.post(
        "/api/v1/federated-jobs",
        _payload(
            settings={"batch-size": BATCH, "head-only": False, "optimizer": "adamw", "learning-rate": 1e-3}
        ),
        format="json",
    )
    assert lora.status_code == 201, lora.json()
    chosen = FederatedJob.objects.get(uid=lora.json()["uid"]).settings
    assert (chosen["head-only"], chosen["optimizer"], chosen["learning-rate"]) == (False, "adamw", 1e-3)
    assert chosen["pooling"] == "mean"
    plain = operator.post("/api/v1/federated-jobs", _payload(privacy=None), format="json")
    assert plain.status_code == 201, plain.json()
    assert FederatedJob.objects.get(uid=plain.json()["uid"]).settings == {
        "batch-size": BATCH,
        "max-steps": MAX_STEPS,
    }


def test_schedule_debits_each_dataset_once_and_passes_the_plans(world, datasets, operator, superlink):
    job = _accepted_job(world, operator)
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 202, response.json()
    reference = _reference()
    # The budget composes: the training is its Poisson-subsampled Gaussian, charged at the budget's
    # δ (1e-4, larger than the job's 1e-5: cheaper than the plan's own ε), its δ not spent outright.
    event = SubsampledGaussianEvent(reference.sample_rate, reference.noise_multiplier, reference.steps)
    charge = LedgerComposition([event]).epsilon(1e-4)
    assert charge < reference.epsilon
    entries = LedgerEntry.objects.filter(kind="training")
    assert entries.count() == 2
    for slug, dataset in datasets.items():
        entry = entries.get(budget__dataset=dataset)
        assert str(entry.job_uid) == job["uid"] and entry.query is None
        assert entry.organisation.slug == slug and entry.analyst.username == f"admin_{slug}"
        assert entry.amount == pytest.approx(reference.epsilon) and entry.delta == 0.0
        assert entry.details["noise_multiplier"] == pytest.approx(reference.noise_multiplier)
        assert (entry.details["epsilon"], entry.details["delta"]) == pytest.approx((reference.epsilon, DELTA))
        assert event_from_dict(entry.details["event"]) == event
        budget = PrivacyBudget.objects.get(dataset=dataset)
        assert budget.spent == pytest.approx(charge, rel=1e-9) and budget.delta_spent == 0.0
        allocation = BudgetAllocation.objects.get(budget=budget, organisation__slug=slug)
        assert allocation.spent == pytest.approx(reference.epsilon) and allocation.delta_spent == 0.0
        assert AuditEvent.objects.filter(
            action="budget.debited", target_id=str(entry.pk), extra__kind="training"
        ).exists()
    # The plans are stored on the participants and travel in the run config (without the rows they
    # were priced on: those go to the ServerApp alone), which the ServerApp accepts as a private job.
    model = FederatedJob.objects.get(pk=job["id"])
    assert model.state == JobState.SCHEDULED
    plans = {p.organisation.slug: p.dp_plan for p in JobParticipant.objects.filter(job=model)}
    assert set(plans) == {"org-a", "org-b"} and all(plans.values())
    config = _run_config(model, participants="org:org-a,org:org-b")
    priced = {org: {k: v for k, v in plan.items() if k != "data"} for org, plan in plans.items()}
    assert json.loads(config["dp-plans"]) == priced
    parsed = JobSettings.from_run_config(config)
    assert parsed.private and set(parsed.dp_plans) == {"org-a", "org-b"}
    assert parsed.dp_plan_for("org-a").noise_multiplier == pytest.approx(reference.noise_multiplier)
    preview = operator.get(f"{job['url']}/privacy").json()
    assert all(p["debited"] for p in preview["participants"])

    # Scheduling again is refused and pays nothing; cancelling keeps what was spent (conservative).
    assert operator.post(f"{job['url']}/schedule").json()["code"] == "job_not_draft"
    assert operator.post(f"{job['url']}/cancel", {}, format="json").status_code == 200
    assert LedgerEntry.objects.filter(kind="training").count() == 2
    assert PrivacyBudget.objects.get(dataset=datasets["org-a"]).spent == pytest.approx(charge, rel=1e-9)
    # The budget page lists the training (a ledger entry without a query renders, no 500).
    from django.test import Client

    page = Client()
    page.force_login(world.a.steward)
    html = page.get(reverse("portal:budget_dashboard", args=["org-a", "sms"])).content.decode()
    assert f'data-testid="training-{job["uid"]}"' in html and "Training: job" in html


def test_one_short_budget_refuses_the_schedule_and_nothing_is_debited(world, datasets, operator, superlink):
    # B's own allocation is below the job's ε; A's dataset (debited first, lower pk) has room.
    allocation_set(
        actor=world.b.steward,
        dataset=datasets["org-b"],
        organisation=world.b.organisation,
        amount=1.0,
        delta_amount=5e-5,
    )
    job = _accepted_job(world, operator)
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409, response.json()
    body = response.json()
    assert body["code"] == "budget_exceeded" and body["detail"].startswith("org-b:"), body
    _nothing_debited(datasets)
    assert FederatedJob.objects.get(pk=job["id"]).state == JobState.DRAFT
    assert not JobParticipant.objects.filter(job_id=job["id"], dp_plan__isnull=False).exists()
    assert not AuditEvent.objects.filter(action="budget.debited").exists()


@pytest.mark.parametrize(
    "policy,code,status",
    [
        ({"measure": "pure", "total": 10.0}, "training_needs_approx_dp", 409),
        ({"measure": "zcdp", "total": 10.0}, "training_needs_approx_dp", 409),
        (
            {"measure": "approx", "total": 10.0, "delta_total": 1e-4, "training": "forbidden"},
            "training_forbidden",
            409,
        ),
    ],
)
def test_a_budget_that_cannot_pay_refuses_the_schedule(
    world, datasets, operator, superlink, policy, code, status
):
    budget_set(actor=world.b.steward, dataset=datasets["org-b"], **policy)
    job = _accepted_job(world, operator)
    refusal = {
        p["organisation"]: p["refusal"] for p in operator.get(f"{job['url']}/privacy").json()["participants"]
    }
    assert refusal["org-a"] is None and refusal["org-b"]["code"] == code
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == status and response.json()["code"] == code, response.json()
    assert "org-b" in response.json()["detail"]
    if policy["measure"] == "pure":
        assert "pure ε-DP" in response.json()["detail"]
    _nothing_debited(datasets)
    assert FederatedJob.objects.get(pk=job["id"]).state == JobState.DRAFT


def test_a_non_private_job_respects_each_datasets_training_policy(world, datasets, operator, superlink):
    job = _accepted_job(world, operator, privacy=None)
    assert job["privacy"] is None
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409 and response.json()["code"] == "training_requires_dp"
    assert response.json()["detail"].startswith("org-a:")  # both say dp (the default); A comes first
    for side in (world.a, world.b):
        budget_set(
            actor=side.steward,
            dataset=datasets[side.organisation.slug],
            measure="approx",
            total=10.0,
            delta_total=1e-4,
            training="any",
        )
    budget_set(
        actor=world.b.steward,
        dataset=datasets["org-b"],
        measure="approx",
        total=10.0,
        delta_total=1e-4,
        training="forbidden",
    )
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409 and response.json()["code"] == "training_forbidden"
    budget_set(
        actor=world.b.steward,
        dataset=datasets["org-b"],
        measure="approx",
        total=10.0,
        delta_total=1e-4,
        training="any",
    )
    assert operator.post(f"{job['url']}/schedule").status_code == 202
    assert not LedgerEntry.objects.filter(kind="training").exists()  # nothing to pay without DP
    assert "dp-plans" not in _run_config(FederatedJob.objects.get(pk=job["id"]))


@pytest.mark.parametrize(
    "privacy",
    [
        {"epsilon": 0, "delta": 1e-5},
        {"epsilon": -1.0, "delta": 1e-5},
        {"epsilon": 1.0, "delta": 1.0},
        {"epsilon": 1.0, "delta": 0},
        {"epsilon": 1.0},
        {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 0},
        {"epsilon": "1", "delta": 1e-5},
        {"epsilon": 1.0, "delta": 1e-5, "sigma": 2},
    ],
)
def test_bad_privacy_loss_is_refused_and_nothing_is_created(world, operator, privacy):
    before = FederatedJob.objects.count()
    response = operator.post("/api/v1/federated-jobs", _payload(privacy=privacy), format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid_privacy_loss", response.json()
    assert FederatedJob.objects.count() == before


def test_a_private_job_cannot_use_fedprox(world, operator):
    response = operator.post(
        "/api/v1/federated-jobs", _payload(strategy="fedprox", settings={"proximal-mu": 0.1}), format="json"
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_job_settings"


def test_delta_not_below_one_over_rows_is_refused_without_stating_the_rows(
    world, datasets, operator, superlink
):
    job = _accepted_job(world, operator, privacy={"epsilon": EPSILON, "delta": 0.01})  # 1/800 < 0.01
    preview = operator.get(f"{job['url']}/privacy").json()
    assert {p["refusal"]["code"] for p in preview["participants"]} == {"delta_too_large"}
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 400 and response.json()["code"] == "delta_too_large"
    assert "800" not in response.json()["detail"] and "1000" not in response.json()["detail"]
    _nothing_debited(datasets)


def test_a_target_that_needs_too_much_noise_is_refused(world, datasets, operator, superlink):
    job = operator.post(
        "/api/v1/federated-jobs",
        _payload(
            participants=[{"organisation": "org-a", "dataset": "org-a/sms"}],
            min_clients=1,
            settings={"batch-size": 800, "max-steps": 1},  # q = 1: every row every step
            privacy={"epsilon": 0.05, "delta": DELTA},
        ),
        format="json",
    ).json()
    api_client(world.a.admin).post(f"{job['url']}/participation", {"decision": "accept"}, format="json")
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 400 and response.json()["code"] == "noise_too_large", response.json()
    assert response.json()["detail"].startswith("org-a:")
    _nothing_debited(datasets)


def test_each_plan_carries_the_registered_rows_and_the_run_config_no_digest(
    world, datasets, operator, superlink, settings, tmp_path, monkeypatch
):
    """The plan stored names the rows it was priced on (the version's count, the digest of the job's
    columns, how its upload was parsed); the ledger, the preview and the report keep it out. The run
    config, which Flower gives every SuperNode, holds no digest: the rows go to the ServerApp alone, in
    the job's shared directory (``dp-data-file``, like the callback token), which binds each plan to
    them (and sends each member its own, tests/federation/test_dp_apps.py)."""
    import stat

    import federation.services as services

    settings.FLOWER_SHARED_DIR = str(tmp_path / "flower")
    job = _accepted_job(world, operator)
    assert operator.post(f"{job['url']}/schedule").status_code == 202
    model = FederatedJob.objects.get(pk=job["id"])
    digests = set()
    for participant in JobParticipant.objects.filter(job=model).select_related("dataset"):
        version = participant.dataset.versions.get(number=1)
        (pair,) = version.content_digests["pairs"]
        digests.add(pair["digest"])
        assert participant.dp_plan["data"] == {
            "rows": ROWS,
            "digest": pair["digest"],
            "text_column": "SMS",
            "label_column": "Label",
            "scheme": "rows-sha256-v1",
            "delimiter": ",",
            "quote_char": '"',
        }
        entry = LedgerEntry.objects.get(kind="training", budget__dataset=participant.dataset)
        assert "data" not in entry.details and pair["digest"] not in json.dumps(entry.details)
    assert len(digests) == 1  # the same rows registered twice: one digest
    (digest,) = digests
    assert digest not in json.dumps(_run_config(model, participants="org:org-a,org:org-b"))

    submitted: list[dict] = []

    class Control:  # the SuperLink's Control API: what the job's run is submitted with
        def submit(self, app_dir, run_config):
            submitted.append(dict(run_config))
            return "7"

    monkeypatch.setattr(services, "_control", Control)
    for number, key in enumerate(SuperNodeKey.objects.order_by("pk"), start=41):  # one node each
        SuperNodeKey.objects.filter(pk=key.pk).update(node_id=str(number))
    assert services.job_submit(job_id=model.pk).state == JobState.RUNNING
    (run_config,) = submitted
    assert digest not in json.dumps(run_config) and "sha256:" not in json.dumps(run_config)
    assert not any("data" in plan for plan in json.loads(run_config["dp-plans"]).values())
    data_file = run_config["dp-data-file"]
    assert stat.S_IMODE(os.stat(data_file).st_mode) == 0o600
    parsed = JobSettings.from_run_config(run_config)  # as the ServerApp reads it, on the SuperLink host
    assert parsed.dp_plan_for("org-a").data.rows == ROWS and parsed.dp_plan_for("org-b").data.digest == digest
    assert "sha256:" not in json.dumps(parsed.to_public_dict()["dp_plans"])
    preview = operator.get(f"{job['url']}/privacy").content.decode()
    assert "sha256:" not in preview


def test_a_version_without_digests_is_refused_until_the_backfill(world, datasets, operator, superlink):
    """A version ingested before digests cannot be priced (`version_needs_digest`), in the preview and
    at schedule, and nothing is debited; the backfill command (decrypting as a worker does) computes
    the digests ingestion would have, and the job is scheduled."""
    from django.core.management import call_command

    from clearinghouse.datasets.models import DatasetVersion

    version = datasets["org-a"].versions.get(number=1)
    stored = version.content_digests
    DatasetVersion.objects.filter(pk=version.pk).update(content_digests=None)
    job = _accepted_job(world, operator)
    refusals = {
        p["organisation"]: p["refusal"] for p in operator.get(f"{job['url']}/privacy").json()["participants"]
    }
    assert refusals["org-a"]["code"] == "version_needs_digest" and refusals["org-b"] is None
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409 and response.json()["code"] == "version_needs_digest"
    assert response.json()["detail"].startswith("org-a:")
    _nothing_debited(datasets)

    out = io.StringIO()
    call_command("dataset_digests_backfill", stdout=out)
    assert "computed for 1 version(s)" in out.getvalue()
    version.refresh_from_db()
    # The same digests; how the upload was parsed is known only as far as the version records it
    # (its delimiter was sniffed from the upload, which is gone): a member then reads its file with
    # the loader's own defaults.
    assert version.content_digests == {**stored, "parse": None}
    assert AuditEvent.objects.filter(
        action="dataset_version.digests_computed", target_id=str(version.pk)
    ).exists()
    assert operator.post(f"{job['url']}/schedule").status_code == 202


def test_a_private_job_on_columns_the_dataset_lacks_is_refused(world, datasets, operator, superlink):
    job = _accepted_job(world, operator, text_column="Message", label_column="Label")
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409 and response.json()["code"] == "dataset_columns_mismatch"
    _nothing_debited(datasets)


def test_a_private_job_needs_registered_datasets_with_a_budget(world, datasets, operator, superlink):
    response = operator.post("/api/v1/federated-jobs", _payload(), format="json")
    job = response.json()
    api_client(world.a.admin).post(
        f"{job['url']}/participation", {"decision": "accept", "dataset": "org-a/sms"}, format="json"
    )
    api_client(world.b.admin).post(f"{job['url']}/participation", {"decision": "accept"}, format="json")
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409 and response.json()["code"] == "dp_needs_registered_dataset"
    assert response.json()["detail"].startswith("org-b:")
    _nothing_debited(datasets)


def test_preview_is_for_the_operator_and_the_participants(world, datasets, operator):
    job = _accepted_job(world, operator)
    url = f"{job['url']}/privacy"
    assert operator.get(url).status_code == 200
    assert api_client(world.a.analyst).get(url).status_code == 200
    assert api_client(world.b.admin).get(url).status_code == 200
    from clearinghouse.accounts.models import User

    assert api_client(User.objects.get(username="admin_org-c")).get(url).status_code == 404
    assert api_client(None).get(url).status_code in (401, 403)
    assert api_client(world.a.admin).get("/api/v1/federated-jobs/999999/privacy").status_code == 404
    # The portal's job page shows the same prices in its Privacy card.
    from django.test import Client

    page = Client()
    page.force_login(world.b.admin)
    html = page.get(reverse("portal:federated_job", args=[job["id"]])).content.decode()
    assert 'data-testid="privacy-card"' in html and 'data-testid="price-org-a"' in html


def test_a_failed_private_job_keeps_what_it_was_debited(world, datasets, operator, superlink):
    import hashlib

    job = _accepted_job(world, operator)
    assert operator.post(f"{job['url']}/schedule").status_code == 202
    spent = {slug: PrivacyBudget.objects.get(dataset=d).spent for slug, d in datasets.items()}
    assert all(value > 0 for value in spent.values())
    FederatedJob.objects.filter(pk=job["id"]).update(
        state=JobState.RUNNING, flower_run_id="7", callback_token_hash=hashlib.sha256(b"tok").hexdigest()
    )
    events = api_client(None)
    events.credentials(HTTP_AUTHORIZATION="Bearer tok")
    failed = events.post(
        f"{job['url']}/events", {"event": "failed", "reason": "round 1: 1 of 2"}, format="json"
    )
    assert failed.status_code == 200 and failed.json()["state"] == "failed"
    # Conservative: members may have trained (and a model update left them) before it failed.
    assert {slug: PrivacyBudget.objects.get(dataset=d).spent for slug, d in datasets.items()} == spent
    assert LedgerEntry.objects.filter(kind="training", job_uid=job["uid"]).count() == 2


def test_the_model_keeps_the_guarantee_its_report_states(
    world, datasets, operator, superlink, settings, tmp_path, media_root
):
    settings.FLOWER_SHARED_DIR = str(tmp_path / "flower")
    job = _accepted_job(world, operator)
    assert operator.post(f"{job['url']}/schedule").status_code == 202
    model = FederatedJob.objects.get(pk=job["id"])
    FederatedJob.objects.filter(pk=model.pk).update(state=JobState.RUNNING, flower_run_id="9")
    plans = {p.organisation.slug: p.dp_plan for p in JobParticipant.objects.filter(job=model)}
    # The ServerApp's report: per organisation the plan it trained under and the steps taken.
    privacy = {
        org: {"plan": plan, "steps_taken": plan["steps"], "reported_epsilon": 2.9}
        for org, plan in plans.items()
    }
    out = tmp_path / "flower" / "jobs" / job["uid"] / "out"
    out.mkdir(parents=True)
    (out / "adapter.safetensors").write_bytes(b"adapter")
    (out / "report.json").write_text(
        json.dumps({"status": "succeeded", "rounds_completed": 2, "privacy": privacy})
    )
    assert job_finalize(job_id=model.pk).state == JobState.SUCCEEDED
    assert model.artifact.report["privacy"] == privacy  # stored as the ServerApp wrote it
    shown = api_client(world.b.admin).get(job["url"]).json()["artifact"]["report"]["privacy"]
    assert set(shown) == {"org-a", "org-b"}
    assert shown["org-a"]["epsilon"] == plans["org-a"]["epsilon"] and shown["org-a"]["delta"] == DELTA
    assert shown["org-a"]["steps_taken"] == plans["org-a"]["steps"] and "rows" not in shown["org-a"]
    from django.test import Client

    page = Client()
    page.force_login(world.a.admin)
    html = page.get(reverse("portal:federated_job", args=[model.pk])).content.decode()
    assert 'data-testid="model-guarantee"><strong>Trained with DP-SGD</strong>' in html
    assert "org-a: ε ≤ 3" in html or "org-a: ε ≤ 2.99" in html, html


# ----------------------------------------------------------------------------- concurrency
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_query_releases_and_a_job_schedule_racing_on_one_budget_never_overspend(transactional_db, settings):
    """A's dataset: total ε = 4 at δ = 1e-3. A's job (ε ≈ 3 on its own; A's allocation 4) and B's
    analysts' four queries of ε = 1 each (B's allocation 4) at the same time: composed, the four
    queries take 4.0 and the job with three of them 3.6, all five 4.5 — one of them must be refused."""
    settings.FLOWER_SUPERLINK = "127.0.0.1:1"
    world = build_world()
    dataset = make_dataset(steward=world.a.steward, slug="sms", csv=_csv(ROWS), schema=SMS_SCHEMA)
    budget_set(actor=world.a.steward, dataset=dataset, measure="approx", total=4.0, delta_total=1e-3)
    dataset_grant_create(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
    )
    for organisation in (world.a.organisation, world.b.organisation):
        allocation_set(
            actor=world.a.steward, dataset=dataset, organisation=organisation, amount=4.0, delta_amount=1e-4
        )
    SuperNodeKey.objects.update(status="registered", node_id="42")
    from federation.services import job_create, job_participation_decide

    job = job_create(
        actor=world.operator,
        name="race",
        text_column="SMS",
        label_column="Label",
        labels=["ham", "spam"],
        participants=[{"organisation": "org-a", "dataset": "org-a/sms"}],
        num_rounds=ROUNDS,
        min_clients=1,
        settings={"batch-size": BATCH, "max-steps": MAX_STEPS},
        privacy={"epsilon": EPSILON, "delta": DELTA},
    )
    job_participation_decide(actor=world.a.admin, job=job, decision="accept")
    version = dataset.versions.get(number=1)
    queries = [
        Query.objects.create(
            dataset=dataset,
            version=version,
            organisation=world.b.organisation,
            analyst=world.b.analyst,
            spec={"n": i},
            query_hash=uuid.uuid4().hex,
            cost=1.0,
            status=QueryStatus.PENDING,
        )
        for i in range(4)
    ]
    connections.close_all()
    barrier = threading.Barrier(5)
    outcomes: list[str] = []
    lock = threading.Lock()

    def release(query: Query) -> None:
        try:
            barrier.wait(timeout=30)
            with transaction.atomic():
                budget_debit(query=query, amount=1.0, measure="approx")
                Query.objects.filter(pk=query.pk).update(status=QueryStatus.RUNNING)
            outcome = "query paid"
        except BudgetExceeded:
            outcome = "query refused"
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    def schedule() -> None:
        try:
            barrier.wait(timeout=30)
            job_schedule(actor=world.operator, job=job)
            outcome = "job paid"
        except BudgetExceeded:
            outcome = "job refused"
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=release, args=(q,)) for q in queries] + [
        threading.Thread(target=schedule)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 5, outcomes
    budget = PrivacyBudget.objects.get(dataset=dataset)
    entries = LedgerEntry.objects.filter(budget=budget)
    paid_queries = outcomes.count("query paid")
    job_paid = outcomes.count("job paid")
    assert entries.filter(kind="query").count() == paid_queries
    assert entries.filter(kind="training").count() == job_paid
    ledger_sum = sum(entries.values_list("amount", flat=True))
    assert budget.spent <= ledger_sum * (1 + 1e-9) and budget.spent <= budget.total  # composed ≤ summed
    # The budget composes: what was paid, composed again from the records, fits the total of 4.
    events = [event_from_dict(e.details["event"]) for e in entries.order_by("pk")]
    composed = LedgerComposition(events).epsilon(budget.delta_total)
    assert budget.spent == pytest.approx(composed, rel=1e-6) and composed <= budget.total * (1 + 1e-9)
    assert paid_queries + job_paid < 5  # 4 queries of ε = 1 and the job (≈ 3) never all fit
    assert paid_queries >= 1  # someone was paid: the race really ran
    state = FederatedJob.objects.get(pk=job.pk).state
    assert state == (JobState.SCHEDULED if job_paid else JobState.DRAFT)


# ----------------------------------------------------------------------------- portal forms
def test_the_owner_sets_the_training_policy_on_the_budget_page(world):
    from django.test import Client

    steward = Client()
    steward.force_login(world.a.steward)
    url = reverse("portal:budget_dashboard", args=["org-a", "survey"])
    page = steward.get(url).content.decode()
    assert '<label for="b-training">' in page and '<select id="b-training" name="training">' in page
    assert '<option value="dp" selected>Only with DP-SGD, paid from this budget</option>' in page
    assert "such a model carries no guarantee" in page  # each choice's one-line explanation
    policy = {"measure": "approx", "total": "10", "delta_total": "1e-5", "training": "forbidden"}
    assert steward.post(url, policy).status_code == 302
    budget = PrivacyBudget.objects.get(dataset=world.a.dataset)
    assert (budget.measure, budget.training) == ("approx", "forbidden")
    assert '<option value="forbidden" selected>' in steward.get(url).content.decode()
    refused = steward.post(url, {**policy, "training": "sometimes"})
    assert refused.status_code == 400 and "training must be one of" in refused.content.decode()
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).training == "forbidden"
    # The API states it too; omitting it keeps it.
    api = api_client(world.a.steward)
    body = api.put(
        "/api/v1/datasets/org-a/survey/budget", {"measure": "approx", "total": 10.0}, format="json"
    )
    assert body.status_code == 200 and body.json()["training"] == "forbidden"
    body = api.put(
        "/api/v1/datasets/org-a/survey/budget",
        {"measure": "approx", "total": 10.0, "training": "any"},
        format="json",
    )
    assert body.json()["training"] == "any"
    bad = api.put(
        "/api/v1/datasets/org-a/survey/budget",
        {"measure": "approx", "total": 10.0, "training": "x"},
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_training_policy"


def test_the_operator_creates_a_private_job_through_the_form(world):
    from django.test import Client

    operator = Client()
    operator.force_login(world.operator)
    url = reverse("portal:federated_job_new")
    page = operator.get(url).content.decode()
    assert "Privacy: target ε per dataset (optional)" in page and 'name="delta"' in page
    data = {
        "name": "Private filter",
        "base_model": "minilm-l6",
        "text_column": "SMS",
        "label_column": "Label",
        "labels": "ham, spam",
        "strategy": "fedavg",
        "num_rounds": 2,
        "min_clients": 2,
        "participants": ["org-a", "org-b"],
        "settings": "",
        "epsilon": "2",
    }
    refused = operator.post(url, data)  # ε without δ
    assert (
        refused.status_code == 200
        and "Must be a number strictly between 0 and 1." in refused.content.decode()
    )
    assert not FederatedJob.objects.filter(name="Private filter").exists()
    response = operator.post(url, {**data, "delta": "1e-5", "max_grad_norm": "0.5"})
    assert response.status_code == 302
    job = FederatedJob.objects.get(name="Private filter")
    assert (job.dp_epsilon, job.dp_delta, job.dp_max_grad_norm) == (2.0, 1e-5, 0.5)
    detail = operator.get(response["Location"]).content.decode()
    assert 'data-testid="job-privacy">DP-SGD: ε = 2' in detail
    # Nobody named a dataset yet: the Privacy card says why each cannot be priced.
    assert 'data-testid="refusal-org-a"' in detail and "dp_needs_registered_dataset" in detail


# ----------------------------------------------------------------------------- publication
# Publishing a model to the whole consortium: only a model trained with DP-SGD on every participant's
# data (its stored report carries each one's guarantee), by an operator, once; every member
# organisation then lists and downloads it with the public part of its guarantee (ε, δ, the
# accountant — not the plan's sample rate, which with the batch size states a member's row count).


def _succeeded(world, operator, settings, tmp_path, *, private: bool = True) -> dict:
    """A job scheduled (private: each dataset debited), run and finalised with the ServerApp's
    report: per organisation the plan it trained under (a private job), or no privacy section."""
    settings.FLOWER_SHARED_DIR = str(tmp_path / "flower")
    job = _accepted_job(world, operator, **({} if private else {"privacy": None}))
    assert operator.post(f"{job['url']}/schedule").status_code == 202, job
    FederatedJob.objects.filter(pk=job["id"]).update(state=JobState.RUNNING, flower_run_id="9")
    plans = {p.organisation.slug: p.dp_plan for p in JobParticipant.objects.filter(job_id=job["id"])}
    privacy = (
        {
            org: {"plan": plan, "steps_taken": plan["steps"], "reported_epsilon": 2.9}
            for org, plan in plans.items()
        }
        if private
        else {}
    )
    out = tmp_path / "flower" / "jobs" / job["uid"] / "out"
    out.mkdir(parents=True)
    (out / "adapter.safetensors").write_bytes(b"adapter-bytes")
    (out / "report.json").write_text(json.dumps({"status": "succeeded", "privacy": privacy}))
    assert job_finalize(job_id=job["id"]).state == JobState.SUCCEEDED
    return job


def test_an_operator_publishes_a_private_model_and_every_member_downloads_it(
    world, datasets, operator, superlink, settings, tmp_path, media_root
):
    job = _succeeded(world, operator, settings, tmp_path)
    # Organisation C took no part: before publication it sees neither the job nor any model.
    outsider = api_client(_org_c_admin())
    assert outsider.get(job["url"]).status_code == 404
    assert outsider.get("/api/v1/models").json()["count"] == 0
    # Only operators publish.
    assert api_client(world.a.admin).post(f"{job['url']}/publish").status_code == 403
    published = operator.post(f"{job['url']}/publish")
    assert published.status_code == 200, published.json()
    assert published.json()["artifact"]["published_at"] is not None
    assert AuditEvent.objects.filter(
        action="federated_job.model_published", target_id=str(job["id"])
    ).exists()
    again = operator.post(f"{job['url']}/publish")
    assert again.status_code == 409 and again.json()["code"] == "model_published"

    listed = outsider.get("/api/v1/models").json()
    assert listed["count"] == 1
    (model,) = listed["results"]
    assert model["job"] == job["uid"] and model["labels"] == ["ham", "spam"]
    assert set(model["guarantee"]) == {"org-a", "org-b"}
    for guarantee in model["guarantee"].values():
        assert set(guarantee) == {"target_epsilon", "epsilon", "delta", "accountant"}
        assert guarantee["delta"] == DELTA and 0 < guarantee["epsilon"] <= guarantee["target_epsilon"]
    download = outsider.get(model["download_url"])
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"adapter-bytes"
    # The portal lists it too, with a download link.
    page = Client()
    page.force_login(_org_c_admin())
    html = page.get(reverse("portal:published_models")).content.decode()
    assert f'data-testid="published-model-{model["id"]}"' in html and "org-a: ε ≤" in html
    assert page.get(reverse("portal:published_model_download", args=[model["id"]])).status_code == 200


def test_a_model_trained_without_dp_stays_with_its_participants(
    world, datasets, operator, superlink, settings, tmp_path, media_root
):
    PrivacyBudget.objects.update(training="any")  # the owners allow training without DP
    job = _succeeded(world, operator, settings, tmp_path, private=False)
    refused = operator.post(f"{job['url']}/publish")
    assert refused.status_code == 409 and refused.json()["code"] == "model_not_private"
    assert ModelArtifact.objects.get(job_id=job["id"]).published_at is None
    assert api_client(_org_c_admin()).get("/api/v1/models").json()["count"] == 0
    artifact = ModelArtifact.objects.get(job_id=job["id"])
    assert api_client(_org_c_admin()).get(f"/api/v1/models/{artifact.pk}/download").status_code == 404


def test_a_private_model_without_every_participants_guarantee_is_not_published(
    world, datasets, operator, superlink, settings, tmp_path, media_root
):
    job = _succeeded(world, operator, settings, tmp_path)
    artifact = ModelArtifact.objects.get(job_id=job["id"])
    artifact.report = {**artifact.report, "privacy": {"org-a": artifact.report["privacy"]["org-a"]}}
    artifact.save(update_fields=["report"])
    refused = operator.post(f"{job['url']}/publish")
    assert refused.status_code == 409 and refused.json()["code"] == "model_not_private"


def test_a_job_without_a_model_has_nothing_to_publish(world, datasets, operator):
    job = _accepted_job(world, operator)
    refused = operator.post(f"{job['url']}/publish")
    assert refused.status_code == 409 and refused.json()["code"] == "no_artifact"


def _org_c_admin():
    from clearinghouse.accounts.models import User

    return User.objects.get(username="admin_org-c")


def test_a_dataset_whose_people_hold_several_rows_cannot_pay_for_dp_sgd(world, operator, superlink):
    """DP-SGD protects one row; a privacy unit of several rows per person would need group privacy,
    which the plan does not price: refused with a reason, nothing debited anywhere."""
    grouped = {
        "columns": [
            {"name": "pid", "type": "integer", "lower": 0, "upper": 10_000},
            *SMS_SCHEMA["columns"],
        ],
        "privacy_unit": {"kind": "identifier", "column": "pid", "max_rows_per_person": 3},
    }
    rows = b"pid,Label,SMS\n" + b"".join(
        f"{i // 2},{('ham', 'spam')[i % 2]},message {i}\n".encode() for i in range(ROWS)
    )
    datasets = {}
    for side, schema, csv in ((world.a, SMS_SCHEMA, _csv(ROWS)), (world.b, grouped, rows)):
        dataset = make_dataset(steward=side.steward, slug="sms", csv=csv, schema=schema)
        budget_set(actor=side.steward, dataset=dataset, measure="approx", total=10.0, delta_total=1e-4)
        allocation_set(
            actor=side.steward, dataset=dataset, organisation=side.organisation, amount=5.0, delta_amount=5e-5
        )
        datasets[side.organisation.slug] = dataset
    job = _accepted_job(world, operator)
    refusal = {
        p["organisation"]: p["refusal"] for p in operator.get(f"{job['url']}/privacy").json()["participants"]
    }
    assert refusal["org-a"] is None and refusal["org-b"]["code"] == "training_needs_row_privacy"
    assert "3 rows" in refusal["org-b"]["detail"]
    response = operator.post(f"{job['url']}/schedule")
    assert response.status_code == 409 and response.json()["code"] == "training_needs_row_privacy"
    _nothing_debited(datasets)
