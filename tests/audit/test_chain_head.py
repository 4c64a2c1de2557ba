from django.core.management import call_command

from clearinghouse.audit.models import CONSORTIUM_STREAM, AuditChainHead
from tests.factories import make_user


def test_chain_restarts_cleanly_after_the_head_row_is_gone(transactional_db):
    AuditChainHead.objects.all().delete()
    make_user("first")
    make_user("second")
    head = AuditChainHead.objects.get(stream=CONSORTIUM_STREAM)
    assert head.seq == 2
    call_command("audit_verify")
