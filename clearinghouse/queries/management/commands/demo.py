"""A ready-made consortium for a first look: three organisations, PUMS and Adult registered and
encrypted, an analyst with a budget and an accepted data-use agreement, and an API token; and the SMS
Spam collection in an annotation project of the Labour Survey Institute, ready to label.

    python manage.py demo        (then `make run`, or with it already running)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from clearinghouse.accounts.models import User
from clearinghouse.accounts.services import api_token_create, operator_create, user_signup
from clearinghouse.datasets.reference_schemas import ADULT, PUMS
from clearinghouse.datasets.services import (
    agreement_accept,
    agreement_publish,
    dataset_grant_create,
    dataset_register,
    dataset_version_import,
    dataset_version_ingest,
)
from clearinghouse.organisations.models import Organisation
from clearinghouse.organisations.services import (
    invitation_accept,
    invitation_create,
    organisation_apply,
    organisation_set_status,
)
from clearinghouse.queries.ledger import allocation_set, budget_set

DATASETS = Path(
    os.environ.get("CLEARINGHOUSE_SHARED_DATASETS", settings.BASE_DIR.parent / "shared" / "datasets")
)
PASSWORD = "demo-Consortium-2026"
DEMO_OPERATOR = "demo-operator"


class Command(BaseCommand):
    help = (
        "Create a demo consortium with encrypted PUMS and Adult datasets and an analyst ready to query, "
        "and the SMS Spam collection in an annotation project ready to label."
    )

    def _annotation_project(self, admin: User, organisation: Organisation) -> Any:
        """The SMS messages, unlabelled in the project's eyes (their `Label` column stays in the data),
        prepared here so the labelling page works at once."""
        from clearinghouse.annotation.services import project_create
        from clearinghouse.annotation.worker import project_prepare

        schema = {
            "columns": [
                {"name": "Label", "type": "categorical", "categories": ["ham", "spam"]},
                {"name": "SMS", "type": "text", "max_length": 1000},
            ]
        }
        dataset = dataset_register(
            actor=admin, organisation=organisation, name="SMS messages", slug="sms", schema=schema
        )
        version = dataset_version_import(
            actor=admin,
            dataset=dataset,
            data=(DATASETS / "sms_spam.tsv").read_bytes(),
            name="sms_spam.tsv",
            delimiter="\t",
            quote_char="",
        )
        if dataset_version_ingest(version_id=version.pk).status != "ready":
            raise CommandError("sms: ingestion failed")
        with transaction.atomic():
            project = project_create(
                actor=admin,
                dataset=dataset,
                name="Spam or not",
                text_column="SMS",
                labels=["ham", "spam"],
                instructions="Spam: unsolicited advertising, prize and premium-rate messages. Ham: the rest.",
                overlap=0.05,
            )
        project_prepare(project_id=project.pk)
        project.refresh_from_db()
        return project

    def handle(self, *args, **options):
        if Organisation.objects.filter(slug="census-bureau").exists():
            raise CommandError("The demo consortium exists already (organisation 'census-bureau').")
        for name in ("pums_1000.csv", "adult.csv", "sms_spam.tsv"):
            if not (DATASETS / name).exists():
                raise CommandError(f"{DATASETS / name} is missing: set CLEARINGHOUSE_SHARED_DATASETS.")
        # The demo's own operator, with the demo password: an operator `make run` created first keeps
        # its own (random) password, so the credentials printed below work in either order.
        operator = (
            User.objects.filter(username=DEMO_OPERATOR, is_operator=True).first()
            or operator_create(username=DEMO_OPERATOR, email="demo-operator@localhost", password=PASSWORD)[0]
        )

        def member(slug: str, name: str, country: str) -> tuple[User, Organisation]:
            admin = user_signup(
                username=f"{slug}-admin", email=f"admin@{slug}.example.org", password=PASSWORD
            )
            org = organisation_apply(
                actor=admin, name=name, slug=slug, country=country, contact_email=f"data@{slug}.example.org"
            )
            return admin, organisation_set_status(actor=operator, organisation=org, status="approved")

        census_admin, census = member("census-bureau", "Census Bureau", "US")
        survey_admin, survey = member("labour-survey", "Labour Survey Institute", "GB")
        research_admin, research = member("research-lab", "Research Lab", "NL")
        analyst = user_signup(username="analyst", email="analyst@research-lab.example.org", password=PASSWORD)
        _, token = invitation_create(
            actor=research_admin, organisation=research, email=analyst.email, role="analyst"
        )
        invitation_accept(actor=analyst, token=token)

        for admin, org, slug, name, schema, file in (
            (census_admin, census, "pums", "PUMS California sample", PUMS, "pums_1000.csv"),
            (survey_admin, survey, "adult", "UCI Adult", ADULT, "adult.csv"),
        ):
            dataset = dataset_register(actor=admin, organisation=org, name=name, slug=slug, schema=schema)
            version = dataset_version_import(
                actor=admin, dataset=dataset, data=(DATASETS / file).read_bytes(), name=file
            )
            version = dataset_version_ingest(version_id=version.pk)  # here, so the demo is ready at once
            if version.status != "ready":
                raise CommandError(f"{slug}: ingestion failed: {version.error_message}")
            agreement_publish(
                actor=admin,
                dataset=dataset,
                text=f"Use {name} for aggregate research only; no attempt to re-identify anyone.",
            )
            dataset_grant_create(actor=admin, dataset=dataset, organisation=research, purpose="query")
            budget_set(actor=admin, dataset=dataset, measure="pure", total=10.0, per_query_max=1.0)
            allocation_set(actor=admin, dataset=dataset, organisation=research, amount=5.0)
            with transaction.atomic():
                agreement_accept(actor=analyst, dataset=dataset, version=1)
            self.stdout.write(
                f"  {org.slug}/{slug}: {version.row_count} rows, encrypted; research-lab may spend ε=5"
            )
        project = self._annotation_project(survey_admin, survey)
        self.stdout.write(
            f"  {survey.slug}/sms: {project.item_count} messages to label in annotation project "
            f"{project.pk} (http://127.0.0.1:8000/annotation/{project.pk}/, as labour-survey-admin)"
        )
        _, api_token = api_token_create(actor=analyst, name="demo")
        self.stdout.write(
            self.style.SUCCESS(
                f"\nDemo consortium ready. Users (password '{PASSWORD}'): {DEMO_OPERATOR}, census-bureau-admin, "
                "labour-survey-admin, research-lab-admin, analyst.\n"
                f"The analyst's API token (shown once): {api_token}\n\n"
                "Try (with `make run` serving):\n"
                f"  curl -s -H 'Authorization: Bearer {api_token}' -H 'Content-Type: application/json' \\\n"
                '    -d \'{"sql": "SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ", '
                '"privacy": {"epsilon": 0.5}}\' \\\n'
                "    http://127.0.0.1:8000/api/v1/datasets/census-bureau/pums/queries\n"
                "or log in at http://127.0.0.1:8000/login/ as 'analyst'."
            )
        )
