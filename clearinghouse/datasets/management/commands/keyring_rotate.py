"""Rotates the keyring: a new KEK and a new staging key pair become current, and every stored data key
(dataset files and staged uploads) is re-wrapped under the new KEK. No data is rewritten; old keys
stay in the keyring (old files and uploads still in flight stay readable) until retired."""

import os

from django.core.management.base import BaseCommand, CommandError

from clearinghouse.annotation.models import AnnotationProject
from clearinghouse.annotation.worker import embeddings_rewrap
from clearinghouse.core.keys import keyring, keyring_path, keyring_reset_cache, staging_public_key_path
from clearinghouse.crypto.errors import CryptoError
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_files_rewrap


class Command(BaseCommand):
    help = (
        "Add a new current KEK and staging key pair to the keyring file, write the new staging public "
        "key for the web processes, and re-wrap every dataset file's data key under the new KEK."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--rewrap-only",
            action="store_true",
            help="Do not change the keyring (it was rotated in the secret store); only re-wrap.",
        )
        parser.add_argument(
            "--retire",
            metavar="KEY_ID",
            help="Remove this old KEK or staging key from the keyring once no file uses it "
            "(retire a staging key only after the web processes use the new public key).",
        )
        parser.add_argument(
            "--public-key-out",
            metavar="PATH",
            help="Where to write the current staging public key (default: STAGING_PUBLIC_KEY_FILE, "
            "or the development file).",
        )

    def handle(self, *args, rewrap_only: bool, retire: str | None, public_key_out: str | None, **options):
        if retire:
            return self._retire(retire)
        if not rewrap_only:
            if os.environ.get("KEYRING_JSON"):
                raise CommandError(
                    "The keyring comes from KEYRING_JSON: rotate it in the secret store, "
                    "then run this command with --rewrap-only."
                )
            rotated = keyring().rotated()
            rotated.save(keyring_path(), overwrite=True)
            keyring_reset_cache()
            self.stdout.write(
                f"New current KEK {rotated.current_id} and staging key "
                f"{rotated.staging_current.id} written to {keyring_path()}."
            )
        self._write_public_key(public_key_out or staging_public_key_path())
        counts = dataset_files_rewrap()
        counts["rewrapped"] += embeddings_rewrap()
        self.stdout.write(
            self.style.SUCCESS(
                f"Re-wrapped {counts['rewrapped']} files under {keyring().current_id}; "
                f"{counts['already_current']} versions now use it."
            )
        )

    def _write_public_key(self, path) -> None:
        public = keyring().staging_current.public
        try:
            public.save(path)
        except OSError as exc:
            self.stdout.write(
                self.style.WARNING(
                    f"Could not write the staging public key to {path} ({exc.strerror}); give the web processes "
                    f"this (public) key as STAGING_PUBLIC_KEY_FILE or STAGING_PUBLIC_KEY_JSON:\n{public.to_json()}"
                )
            )
            return
        self.stdout.write(
            f"Staging public key {public.id} written to {path}: deploy it to the web processes "
            "(STAGING_PUBLIC_KEY_FILE), then retire the old staging key."
        )

    def _retire(self, key_id: str) -> None:
        in_use = DatasetVersion.objects.filter(kek_id=key_id).exclude(data_path="", staging_path="").count()
        in_use += (
            AnnotationProject.objects.filter(embeddings_kek_id=key_id).exclude(embeddings_path="").count()
        )
        if in_use:
            raise CommandError(
                f"{in_use} dataset versions or annotation projects still use {key_id}; rotate (re-wrap) first."
            )
        try:
            remaining = keyring().without(key_id)
        except CryptoError as exc:
            raise CommandError(str(exc)) from None
        remaining.save(keyring_path(), overwrite=True)
        keyring_reset_cache()
        self.stdout.write(self.style.SUCCESS(f"Retired {key_id}."))
