"""Runs the whole service on one machine with the embedded defaults.

Migrates, creates the first consortium operator (printing its password once), starts a real Celery
worker on the embedded SQLite broker, and serves the portal and API on http://127.0.0.1:8000.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from clearinghouse.accounts.models import User
from clearinghouse.accounts.services import operator_create
from clearinghouse.core.keys import ensure_dev_keys


class Command(BaseCommand):
    help = "Run web server and Celery worker with embedded defaults (development, one machine)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--no-worker", action="store_true", help="Do not start the Celery worker.")

    def handle(self, *args, addr: str, no_worker: bool, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self._ensure_operator()
        if settings.KEYRING_ALLOW_DEV and not (settings.KEYRING_FILE or os.environ.get("KEYRING_JSON")):
            # The worker decrypts with var/keyring.dev.json (0600); the web encrypts uploads to the
            # staging public key written beside it and never loads the keyring.
            ensure_dev_keys()
        worker = None if no_worker else self._start_worker()
        # A plain `kill` should stop the worker too, as Ctrl-C does.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            call_command("runserver", addr, use_reloader=False)
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()

    def _ensure_operator(self) -> None:
        if User.objects.filter(is_operator=True).exists():
            self.stdout.write(
                "A consortium operator exists; log in with the credentials printed when it was created "
                "(at the first `make run`, or by `make demo`: demo-operator)."
            )
            return
        user, password = operator_create(username="operator", email="operator@localhost")
        line = "=" * 72
        self.stdout.write(
            self.style.WARNING(
                f"{line}\nFirst consortium operator created (shown only this once):\n"
                f"  username: {user.username}\n  password: {password}\n"
                f"Log in at http://127.0.0.1:8000/login/\n{line}"
            )
        )

    def _start_worker(self) -> subprocess.Popen:
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "clearinghouse.settings.dev"),
        )
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "clearinghouse",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            "--queues",
            "default,ingestion,dp,federation",
            # Embedded beat: periodic tasks (federated jobs reconciled with the SuperLink).
            "--beat",
            "--schedule",
            str(settings.VAR_DIR / "celerybeat-schedule"),
        ]
        self.stdout.write(f"Starting Celery worker (broker: {settings.CELERY_BROKER_URL.split('://')[0]})")
        return subprocess.Popen(command, env=env, cwd=settings.BASE_DIR)
