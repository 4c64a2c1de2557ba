from celery import shared_task


@shared_task(name="core.ping")
def ping_task() -> str:
    """Answers 'pong': lets readiness checks and tests see a real worker consume a real message."""
    return "pong"
