"""Computes the content digests of the ready dataset versions ingested before digests were computed
at ingestion (a private federated job on such a version is refused with `version_needs_digest` until
then). Decrypts each stored table in memory: run it where the workers' keyring is."""

from django.core.management.base import BaseCommand, CommandError

from clearinghouse.crypto.errors import KeyringError
from clearinghouse.datasets.services import dataset_version_digests_backfill


class Command(BaseCommand):
    help = (
        "Compute the content digests (rows and a digest of each text/label column pair) of every ready "
        "dataset version that has none; a private federated job needs them to check members' files."
    )

    def handle(self, *args, **options):
        try:
            counts = dataset_version_digests_backfill()
        except KeyringError:
            raise CommandError(
                "The keyring cannot decrypt dataset files: run this where the workers' keyring is "
                "(KEYRING_FILE or KEYRING_JSON)."
            ) from None
        self.stdout.write(
            f"content digests computed for {counts['computed']} version(s); "
            f"{counts['corrupt']} version(s) failed authentication and were marked corrupt"
        )
