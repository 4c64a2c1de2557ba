"""Creates a production keyring (a KEK and a staging key pair) and the staging public key beside it.

    python manage.py keyring_init --out /secure/keyring.json --public-out /etc/clearinghouse/staging-public.json

The keyring (mode 0600) goes to the workers that decrypt, as a mounted secret; the public key (not
secret) to every process. Refuses to overwrite an existing keyring: losing a KEK loses every file
wrapped under it."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from clearinghouse.crypto.errors import KeyringError
from clearinghouse.crypto.keyring import Keyring


class Command(BaseCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="the keyring file to create (mode 0600)")
        parser.add_argument(
            "--public-out", required=True, help="the staging public key file for web processes"
        )

    def handle(self, *args, out: str, public_out: str, **options):
        ring = Keyring.generate().with_new_staging_key()
        try:
            ring.save(out)
        except KeyringError as exc:
            raise CommandError(str(exc)) from None
        ring.staging_current.public.save(public_out)
        self.stdout.write(
            f"Keyring {out} (KEK {ring.current.id}, staging key {ring.staging_current.id}); "
            f"staging public key {public_out}. Back the keyring up offline: without it the "
            "encrypted store cannot be read."
        )
