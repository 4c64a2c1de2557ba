"""Tasks of the `federation` queue: the only code that talks to the SuperLink."""

from __future__ import annotations

from celery import shared_task

from .services import (
    job_finalize,
    job_stop,
    job_submit,
    jobs_reconcile,
    supernode_key_register,
    supernode_key_unregister,
)


@shared_task(name="federation.job_submit", acks_late=True)
def job_submit_task(job_id: int) -> str | None:
    job = job_submit(job_id=job_id)
    return job.state if job else None


@shared_task(name="federation.job_stop")
def job_stop_task(job_id: int) -> None:
    job_stop(job_id=job_id)


@shared_task(name="federation.job_finalize", acks_late=True)
def job_finalize_task(job_id: int) -> str | None:
    job = job_finalize(job_id=job_id)
    return job.state if job else None


@shared_task(name="federation.jobs_reconcile")
def jobs_reconcile_task() -> dict[str, int]:
    return jobs_reconcile()


@shared_task(name="federation.supernode_key_register", acks_late=True)
def supernode_key_register_task(key_id: int) -> str | None:
    key = supernode_key_register(key_id=key_id)
    return key.status if key else None


@shared_task(name="federation.supernode_key_unregister")
def supernode_key_unregister_task(key_id: int) -> None:
    supernode_key_unregister(key_id=key_id)
