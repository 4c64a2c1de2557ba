"""Clearinghouse: a secure data-sharing service for a consortium of organisations.

Deliberately empty: the pure cores (`clearinghouse.crypto`, `clearinghouse.dp`) must import without
Django or Celery. The Celery app lives in `clearinghouse.celery`, which `celery -A clearinghouse`
finds by name and Django loads when it starts (`clearinghouse.core.apps.CoreConfig.ready`).
"""
