from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_save


class AccountsConfig(AppConfig):
    name = "clearinghouse.accounts"
    label = "accounts"

    def ready(self) -> None:
        # Here, not at the top: `sessions` imports models (loadable once the registry is ready), and
        # `schema` registers its OpenAPI extension as it is imported.
        from . import (
            schema,  # noqa: F401  (registers the OpenAPI description of token auth)
            sessions,
        )

        # Every session is recorded with its user, so that services can end a user's sessions.
        user_logged_in.connect(sessions.session_recorded, dispatch_uid="accounts.session_recorded")
        user_logged_out.connect(sessions.session_forgotten, dispatch_uid="accounts.session_forgotten")
        post_save.connect(
            sessions.deactivated_user_sessions_ended,
            sender=get_user_model(),
            dispatch_uid="accounts.deactivated_user_sessions_ended",
        )
