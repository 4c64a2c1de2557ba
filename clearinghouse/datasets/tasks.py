from celery import shared_task

from .services import dataset_version_ingest


@shared_task(name="datasets.ingest_version", acks_late=True)
def dataset_version_ingest_task(version_id: int) -> str:
    return dataset_version_ingest(version_id=version_id).status
