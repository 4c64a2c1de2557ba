from django.core.management import call_command

from clearinghouse.audit.models import AuditChainHead
from tests.factories import make_user


def test_chain_restarts_cleanly_after_the_head_row_is_gone(transactional_db):
    AuditChainHead.objects.all().delete()
    make_user("first")
    make_user("second")
    head = AuditChainHead.objects.get(pk=1)
    assert head.seq == 2
    call_command("audit_verify")
