"""The federation portal pages, as a browser without JavaScript uses them: the operator's job form,
a participant's decision, a job's rounds and plot, the model download, and SuperNode keys. Who may
open which page is in tests/security/test_authorization_matrix.py."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.test import Client
from django.urls import reverse

from federation.models import FederatedJob, JobRound, JobState, ParticipantStatus, SuperNodeKey
from federation.services import job_create


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(**overrides) -> dict:
    data = {
        "name": "Spam filter",
        "base_model": "minilm-l6",
        "text_column": "SMS",
        "label_column": "Label",
        "labels": "ham, spam",
        "strategy": "fedprox",
        "num_rounds": 4,
        "min_clients": 2,
        "participants": ["org-a", "org-b"],
        "settings": '{"lora-r": 4, "batch-size": 8}',
    }
    data.update(overrides)
    return data


def draft_job(world) -> FederatedJob:
    return job_create(
        actor=world.operator,
        name="Draft job",
        text_column="SMS text",
        label_column="Label",
        labels=["ham", "spam"],
        participants=[{"organisation": "org-a"}, {"organisation": "org-b"}],
    )


def test_operator_creates_a_job_through_the_form(world):
    operator = logged_in(world.operator)
    page = operator.get(reverse("portal:federated_job_new"))
    assert page.status_code == 200
    assert 'value="minilm-l6"' in page.content.decode()  # the default base model is filled in
    response = operator.post(reverse("portal:federated_job_new"), form_data())
    job = FederatedJob.objects.get(name="Spam filter")
    assert response.status_code == 302 and response["Location"] == reverse(
        "portal:federated_job", args=[job.pk]
    )
    assert (job.labels, job.strategy, job.num_rounds, job.min_clients) == (["ham", "spam"], "fedprox", 4, 2)
    assert job.settings == {"lora-r": 4, "batch-size": 8} and job.state == JobState.DRAFT
    assert {p.organisation.slug: p.status for p in job.participants.all()} == {
        "org-a": "invited",
        "org-b": "invited",
    }

    body = operator.get(response["Location"]).content.decode()
    assert "Spam filter" in body and "Draft" in body and "lora-r = 4" in body
    assert reverse("portal:federated_job_schedule", args=[job.pk]) in body
    listing = operator.get(reverse("portal:federated_jobs")).content.decode()
    assert reverse("portal:federated_job", args=[job.pk]) in listing and "0 / 4" in listing
    assert reverse("portal:federated_job_new") in listing


@pytest.mark.parametrize(
    "overrides,error",
    [
        ({"settings": "{not json"}, "Not valid JSON"),
        ({"settings": "[1, 2]"}, "must be a JSON object"),
        ({"labels": "spam"}, "at least two labels"),
        ({"participants": ["org-a", "no-such-org"]}, "not one of the available choices"),
        # The service's own rules come back onto the form too.
        ({"settings": '{"callback-url": "http://evil.example"}'}, "Unknown settings"),
        ({"min_clients": 3}, "min_clients (3) exceeds the 2 invited participants"),
        ({"base_model": "/nowhere/model"}, "/nowhere/model"),
    ],
)
def test_bad_form_input_shows_the_error_and_creates_nothing(world, overrides, error):
    before = FederatedJob.objects.count()
    response = logged_in(world.operator).post(reverse("portal:federated_job_new"), form_data(**overrides))
    assert response.status_code == 200
    errors = " ".join(re.findall(r'<ul class="errorlist">(.*?)</ul>', response.content.decode(), re.DOTALL))
    assert error in errors.replace("&quot;", '"').replace("&#x27;", "'")
    assert FederatedJob.objects.count() == before


def test_participant_admin_accepts_through_the_page(world):
    job = draft_job(world)
    url = reverse("portal:federated_job", args=[job.pk])
    decide = reverse("portal:federated_job_participation", args=[job.pk])
    analyst_page = logged_in(world.a.analyst).get(url).content.decode()
    assert decide not in analyst_page  # only the org admin decides
    admin = logged_in(world.a.admin)
    page = admin.get(url).content.decode()
    assert decide in page and 'value="accept"' in page and 'value="decline"' in page
    # The agent command carries the job's own columns and labels, quoted for the shell.
    command = (
        re.search(r'data-testid="agent-command">(.*?)</code>', page, re.DOTALL)
        .group(1)
        .replace("&#x27;", "'")
    )
    assert "--text-column 'SMS text' --label-column Label --labels ham,spam --organisation org-a" in command

    response = admin.post(
        decide,
        {
            "decision": "accept",
            "data_description": "SMS inbox export",
            "dataset": f"org-a/{world.a.dataset.slug}",
        },
    )
    assert response.status_code == 302 and response["Location"] == url
    participant = job.participants.get(organisation=world.a.organisation)
    assert participant.status == ParticipantStatus.ACCEPTED
    assert participant.data_description == "SMS inbox export" and participant.dataset == world.a.dataset
    after = admin.get(url).content.decode()
    assert (
        "accepted the job" in after
        and "SMS inbox export" in after
        and f"org-a/{world.a.dataset.slug}" in after
    )
    # A refused decision (B's dataset without a training grant) is a message, and nothing changes.
    refused = logged_in(world.b.admin).post(
        decide,
        {"decision": "accept", "dataset": f"org-a/{world.a.dataset.slug}"},
        HTTP_REFERER=url,
        follow=True,
    )
    assert refused.status_code == 403 and "no training grant" in refused.content.decode()
    assert job.participants.get(organisation=world.b.organisation).status == ParticipantStatus.INVITED


def _add_rounds(job: FederatedJob) -> None:
    for number, accuracy, loss in ((1, 0.6, 0.9), (2, 0.8, 0.5), (3, 0.9, 0.3)):
        record = {
            "clients": [
                {
                    "node_id": 7,
                    "organisation": "org-a",
                    "evaluate": {"eval-accuracy": accuracy + 0.01, "eval-loss": loss},
                }
            ],
            "dropouts": [{"node_id": 9, "organisation": "org-b", "reason": "no reply within round-timeout"}]
            if number == 2
            else [],
        }
        JobRound.objects.create(
            job=job,
            number=number,
            accuracy=accuracy,
            macro_f1=accuracy - 0.05,
            loss=loss,
            clients_trained=1,
            bytes_sent=2048,
            bytes_received=1024,
            seconds=4.5,
            record=record,
        )


def _polyline(body: str, series: str) -> list[tuple[float, float]]:
    """The (x, y) points of a line of the matplotlib chart (`portal.charts`: a path of M/L commands
    in the group that carries the series' name)."""
    path = re.search(rf'<g id="[^"]+" data-series="{series}">\s*<path d="([^"]*)"', body).group(1)
    numbers = [float(v) for v in path.replace("M", " ").replace("L", " ").split()]
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def _proportional(points: list[tuple[float, float]], values: list[float]) -> bool:
    """Points equally spaced along x whose heights follow `values` linearly (SVG y grows downwards,
    so a larger value is drawn higher: a smaller y)."""
    (x1, y1), (x2, y2), (x3, y3) = points
    scale = (y1 - y2) / (values[1] - values[0])
    return (
        abs((x2 - x1) - (x3 - x2)) < 0.01
        and scale > 0
        and abs((y2 - y3) / (values[2] - values[1]) / scale - 1) < 1e-3
    )


def test_job_page_shows_rounds_and_the_plot(world):
    job = FederatedJob.objects.get(pk=world.a.job_id)
    url = reverse("portal:federated_job", args=[job.pk])
    analyst = logged_in(world.a.analyst)
    empty = analyst.get(url).content.decode()
    assert "No round has been reported yet." in empty and "<svg" not in empty

    _add_rounds(job)
    FederatedJob.objects.filter(pk=job.pk).update(
        final_evaluation={
            "accuracy": 0.9,
            "macro_f1": 0.85,
            "per_class_f1": {"ham": 0.95, "spam": 0.75},
            "confusion": [[9, 1], [1, 9]],
        }
    )
    body = analyst.get(url).content.decode()
    assert "<th>F1 of spam</th><td>0.75</td>" in body and "<th>macro f1</th><td>0.85</td>" in body
    # Rounds 1..3 equally spaced; accuracy (0.6, 0.8, 0.9) on its 0..1 axis, loss (0.9, 0.5, 0.3) on its own.
    assert _proportional(_polyline(body, "accuracy"), [0.6, 0.8, 0.9])
    assert _proportional(_polyline(body, "loss"), [0.9, 0.5, 0.3])
    assert ">accuracy</text>" in body and ">loss</text>" in body and ">round</text>" in body
    assert "<td>0.9</td>" in body and "<td>0.85</td>" in body  # round 3's accuracy and macro-F1 in the table
    assert "org-a: 0.91" in body  # the client's own held-out accuracy
    assert "org-b: no reply within round-timeout" in body
    assert "3 of 3 done" in body
    assert 'http-equiv="refresh"' not in body  # a finished job does not change any more

    FederatedJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING, flower_run_id="17")
    assert '<meta http-equiv="refresh" content="10">' in analyst.get(url).content.decode()


def test_model_download_is_for_participants_and_refused_for_the_operator(world):
    job_url = reverse("portal:federated_job", args=[world.a.job_id])
    model_url = reverse("portal:federated_job_model", args=[world.a.job_id])
    analyst = logged_in(world.a.analyst)
    assert model_url in analyst.get(job_url).content.decode()
    response = analyst.get(model_url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"model-bytes"
    assert "attachment" in response["Content-Disposition"]

    operator = logged_in(world.operator)
    assert model_url not in operator.get(job_url).content.decode()
    refused = operator.get(model_url)
    assert refused.status_code == 403 and "participating organisations" in refused.content.decode()
    assert logged_in(world.b.admin).get(model_url).status_code == 404


def _public_key_text(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def test_key_page_adds_a_valid_key_and_rejects_an_rsa_key(world):
    from federation.flower.security import make_supernode_keypair

    url = reverse("portal:supernode_keys")
    admin = logged_in(world.a.admin)
    page = admin.get(url).content.decode()
    assert "python -m federation.agent keygen --out keys --name gpu-1" in page
    assert SuperNodeKey.objects.get(pk=world.a.node_key_id).fingerprint in page
    assert url in admin.get(reverse("portal:organisation")).content.decode()
    assert url not in logged_in(world.a.analyst).get(reverse("portal:organisation")).content.decode()

    with tempfile.TemporaryDirectory() as tmp:
        public_key = make_supernode_keypair(Path(tmp), "gpu-2")[1].read_text()
    response = admin.post(url, {"name": "gpu-2", "public_key": public_key})
    assert response.status_code == 302 and response["Location"] == url
    key = SuperNodeKey.objects.get(organisation=world.a.organisation, name="gpu-2")
    assert key.status == "pending"
    listed = admin.get(url).content.decode()
    assert key.fingerprint in listed and "Pending registration" in listed

    rsa_key = _public_key_text(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    refused = admin.post(url, {"name": "gpu-3", "public_key": rsa_key})
    assert refused.status_code == 200 and "EC P-384" in refused.content.decode()
    assert not SuperNodeKey.objects.filter(name="gpu-3").exists()

    revoke = admin.post(reverse("portal:supernode_key_revoke", args=[key.pk]))
    assert revoke.status_code == 302
    key.refresh_from_db()
    assert key.status == "revoked"


def test_federation_link_is_in_the_nav_for_members_and_operators(world):
    from tests.factories import make_user

    jobs = reverse("portal:federated_jobs")
    for user in (world.operator, world.a.analyst, world.b.admin):
        assert f'href="{jobs}"' in logged_in(user).get(reverse("portal:dashboard")).content.decode()
    outsider = make_user("no_organisation")
    assert f'href="{jobs}"' not in logged_in(outsider).get(reverse("portal:dashboard")).content.decode()
