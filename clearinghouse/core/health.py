"""Readiness checks: can this process reach what it needs (database, broker, SuperLink)?

Each check answers "ok", "unreachable" or "disabled" and never the reason: error messages can hold
connection URLs with passwords. The reason is logged by exception class only.
"""

from __future__ import annotations

import logging
import socket

from django.conf import settings
from django.db import connection

from clearinghouse.celery import app
from clearinghouse.core.probe import host_port

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 3.0


def run_check(name: str, check) -> str:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("Readiness check %s failed: %s", name, exc.__class__.__name__)
        return "unreachable"


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def broker_check() -> str:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=TIMEOUT_SECONDS)
    return "ok"


def _superlink() -> str:
    if not settings.FLOWER_SUPERLINK:
        return "disabled"
    # TCP reachability of the Control API's port; TLS and authentication are the federation app's.
    with socket.create_connection(host_port(settings.FLOWER_SUPERLINK), timeout=TIMEOUT_SECONDS):
        return "ok"


def readiness() -> dict[str, str]:
    return {
        "database": run_check("database", _database),
        "broker": run_check("broker", broker_check),
        "superlink": run_check("superlink", _superlink),
    }


def is_ready(checks: dict[str, str]) -> bool:
    return all(state in {"ok", "disabled"} for state in checks.values())
