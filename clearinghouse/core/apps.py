from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "clearinghouse.core"
    label = "core"

    def ready(self) -> None:
        # Every Django process that queues tasks needs the Celery app configured (broker, routes)
        # before the first `delay()`; it is no longer imported by the package's __init__.
        from clearinghouse import celery  # noqa: F401
