from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "clearinghouse.audit"
    label = "audit"

    def ready(self) -> None:
        from django.core.signals import request_started

        from .services import forget_held_streams

        # A request is a transaction of its own in production; the lock-order check (tests) starts
        # afresh with each, even when a test wraps several requests in one transaction.
        request_started.connect(forget_held_streams, dispatch_uid="audit-forget-held-streams")
