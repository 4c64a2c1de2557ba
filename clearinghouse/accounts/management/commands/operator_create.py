"""Creates a consortium operator and prints the generated password once (first start of a deployment)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from clearinghouse.accounts.services import operator_create
from clearinghouse.core.errors import ApplicationError


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", required=True)

    def handle(self, *args, username: str, email: str, **options):
        try:
            with transaction.atomic():
                user, password = operator_create(username=username, email=email)
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} ({exc.code})") from None
        self.stdout.write(f"Operator {user.username} created. Password (shown only this once): {password}")
