"""Annotation tasks: thin wrappers around `worker.py` and the sweeper in `services.py`."""

from celery import shared_task
from django.conf import settings

from .services import annotation_recover_stuck
from .worker import export_execute, item_texts_sealed, model_run_execute, project_prepare

# Long work stops before the sweeper presumes it lost: softly first (the run ends failed with a code).
_HARD_LIMIT = max(60.0, settings.ANNOTATION_STUCK_SECONDS - 60)
_LIMITS = {"time_limit": _HARD_LIMIT, "soft_time_limit": max(30.0, _HARD_LIMIT - 60)}


@shared_task(name="annotation.prepare", acks_late=True, **_LIMITS)
def project_prepare_task(project_id: int) -> str:
    return project_prepare(project_id=project_id)


@shared_task(name="annotation.item_texts", time_limit=60, soft_time_limit=50)
def item_texts_task(project_id: int, item_ids: list[int], public_key: str) -> str:
    return item_texts_sealed(project_id=project_id, item_ids=item_ids, public_key=public_key)


@shared_task(name="annotation.model_run", acks_late=True, **_LIMITS)
def model_run_task(run_id: int) -> str:
    return model_run_execute(run_id=run_id)


@shared_task(name="annotation.export", acks_late=True, **_LIMITS)
def export_task(export_id: int) -> str:
    return export_execute(export_id=export_id)


@shared_task(name="annotation.recover_stuck")
def recover_stuck_task() -> dict[str, int]:
    return annotation_recover_stuck()
