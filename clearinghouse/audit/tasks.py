from celery import shared_task

from .services import audit_checkpoint


@shared_task(name="audit.checkpoint")
def audit_checkpoint_task() -> int | None:
    event = audit_checkpoint()
    return None if event is None else event.seq
