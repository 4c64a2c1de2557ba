from itertools import islice

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from clearinghouse.audit.models import AuditEvent
from clearinghouse.audit.selectors import audit_chain_problems, audit_stream_count

# A damaged log can break in many places; the first few name where to look.
MAX_PROBLEMS_SHOWN = 20


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chains (one per stream) and its checkpoints; exits non-zero and "
        "names the broken links."
    )

    def handle(self, *args, **options):
        # One snapshot for the heads, the checkpoints and the events: writers carry on meanwhile.
        # (Inside a caller's transaction — a test's — its snapshot is what there is to read.)
        outermost = not connection.in_atomic_block
        with transaction.atomic():
            if outermost and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            problems, count, streams = self._verify()
        if problems:
            raise CommandError(
                "\n".join(
                    f"Audit chain broken at event #{problem.seq}: {problem.reason}." for problem in problems
                )
            )
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain intact: {count} events verified in {streams} streams.")
        )

    def _verify(self):
        problems = list(islice(audit_chain_problems(), MAX_PROBLEMS_SHOWN))
        return problems, AuditEvent.objects.count(), audit_stream_count()
