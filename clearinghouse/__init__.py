"""Clearinghouse: a secure data-sharing service for a consortium of organisations."""

from .celery import app as celery_app

__all__ = ("celery_app",)
