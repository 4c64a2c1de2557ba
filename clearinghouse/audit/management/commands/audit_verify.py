from django.core.management.base import BaseCommand, CommandError

from clearinghouse.audit.models import AuditEvent
from clearinghouse.audit.selectors import audit_chain_problems


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits non-zero and names the first broken link."

    def handle(self, *args, **options):
        problem = next(audit_chain_problems(), None)
        if problem is not None:
            raise CommandError(f"Audit chain broken at event #{problem.seq}: {problem.reason}.")
        count = AuditEvent.objects.count()
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {count} events verified."))
