from itertools import islice

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from clearinghouse.audit.models import AuditEvent
from clearinghouse.audit.selectors import (
    audit_chain_problems,
    audit_checkpoint_latest,
    audit_checkpoint_with_digest,
    audit_stream_count,
)

# A damaged log can break in many places; the first few name where to look.
MAX_PROBLEMS_SHOWN = 20


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chains (one per stream) and its checkpoints; exits non-zero and "
        "names the broken links. --expect-digest: a checkpoint digest kept outside the database (the "
        "logs, a previous run's output), which the log must still hold."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--expect-digest",
            action="append",
            default=[],
            metavar="DIGEST",
            help="a checkpoint digest recorded earlier; the log must still hold that checkpoint",
        )

    def handle(self, *args, **options):
        # One snapshot for the heads, the checkpoints and the events: writers carry on meanwhile.
        # (Inside a caller's transaction — a test's — its snapshot is what there is to read.)
        outermost = not connection.in_atomic_block
        with transaction.atomic():
            if outermost and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            problems = list(islice(audit_chain_problems(), MAX_PROBLEMS_SHOWN))
            lost = [d for d in options["expect_digest"] if audit_checkpoint_with_digest(d.strip()) is None]
            count, streams = AuditEvent.objects.count(), audit_stream_count()
            latest = audit_checkpoint_latest()
        lines = [f"Audit chain broken at event #{problem.seq}: {problem.reason}." for problem in problems]
        lines += [
            f"Audit log cut: it no longer holds the checkpoint with digest {digest} (events were removed)."
            for digest in lost
        ]
        if lines:
            raise CommandError("\n".join(lines))
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain intact: {count} events verified in {streams} streams.")
        )
        if latest is not None:
            self.stdout.write(
                f"Latest checkpoint: event #{latest.seq}, digest {latest.extra.get('digest')} "
                "(keep it: --expect-digest checks a later log still holds it)."
            )
