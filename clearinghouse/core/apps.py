from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "clearinghouse.core"
    label = "core"

    def ready(self) -> None:
        # Every Django process that queues tasks needs the Celery app configured (broker, routes)
        # before the first task is sent; it is no longer imported by the package's __init__. In
        # ready(), Django's place for start-up work, so that importing this module configures nothing.
        from clearinghouse import celery  # noqa: F401
