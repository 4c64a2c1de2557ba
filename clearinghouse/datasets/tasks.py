from celery import shared_task
from django.conf import settings

from .services import dataset_staging_sweep, dataset_version_ingest, dataset_versions_recover

# A run that outlives INGESTION_STUCK_SECONDS is presumed lost and taken over, so the task stops
# before that: softly first (the version ends failed, with a code), then hard (the recovery sweep
# takes it from there). Enforced by the prefork pool (the default), not by --pool solo.
_HARD_LIMIT = max(60.0, settings.INGESTION_STUCK_SECONDS - 60)


@shared_task(
    name="datasets.ingest_version",
    acks_late=True,
    time_limit=_HARD_LIMIT,
    soft_time_limit=max(30.0, _HARD_LIMIT - 60),
)
def dataset_version_ingest_task(version_id: int) -> str:
    return dataset_version_ingest(version_id=version_id).status


@shared_task(name="datasets.recover_stuck")
def dataset_versions_recover_task() -> dict[str, int]:
    return dataset_versions_recover()


@shared_task(name="datasets.staging_sweep")
def dataset_staging_sweep_task() -> dict[str, int]:
    return dataset_staging_sweep()
