"""Rotates the key-encryption key: a new KEK becomes current and every stored data key is re-wrapped
under it. No data is rewritten; old KEKs stay in the keyring (old files stay readable) until retired."""

from django.core.management.base import BaseCommand, CommandError

from clearinghouse.core.keys import keyring, keyring_path, keyring_reset_cache
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_files_rewrap


class Command(BaseCommand):
    help = "Add a new current KEK to the keyring file and re-wrap every dataset file's data key under it."

    def add_arguments(self, parser):
        parser.add_argument("--rewrap-only", action="store_true",
                            help="Do not change the keyring (it was rotated in the secret store); only re-wrap.")
        parser.add_argument("--retire", metavar="KEK_ID",
                            help="Remove this old KEK from the keyring once no file uses it.")

    def handle(self, *args, rewrap_only: bool, retire: str | None, **options):
        import os

        if retire:
            return self._retire(retire)
        if not rewrap_only:
            if os.environ.get("KEYRING_JSON"):
                raise CommandError("The keyring comes from KEYRING_JSON: rotate it in the secret store, "
                                   "then run this command with --rewrap-only.")
            rotated = keyring().rotated()
            rotated.save(keyring_path(), overwrite=True)
            keyring_reset_cache()
            self.stdout.write(f"New current KEK {rotated.current_id} written to {keyring_path()}.")
        counts = dataset_files_rewrap()
        self.stdout.write(self.style.SUCCESS(
            f"Re-wrapped {counts['rewrapped']} files under {keyring().current_id}; "
            f"{counts['already_current']} versions now use it."))

    def _retire(self, kek_id: str) -> None:
        in_use = DatasetVersion.objects.filter(kek_id=kek_id).exclude(data_path="", staging_path="").count()
        if in_use:
            raise CommandError(f"{in_use} dataset versions still use {kek_id}; rotate (re-wrap) first.")
        keyring().without(kek_id).save(keyring_path(), overwrite=True)
        keyring_reset_cache()
        self.stdout.write(self.style.SUCCESS(f"Retired {kek_id}."))
