"""Settings shared by every environment.

Everything that differs between a laptop and a server comes from environment variables; the
defaults here are the embedded ones (SQLite, local files, a Celery broker in a SQLite file) so that
one command runs the whole service on one machine.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("CLEARINGHOUSE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = False
SECRET_KEY = os.environ.get("SECRET_KEY", "")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "axes",
    "clearinghouse.core",
    "clearinghouse.audit",
    "clearinghouse.accounts",
    "clearinghouse.organisations",
    "clearinghouse.datasets",
    "clearinghouse.queries",
    "clearinghouse.portal",
    "federation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "clearinghouse.core.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "clearinghouse.accounts.middleware.SuspendedOrganisationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so that it sees the outcome of authentication (django-axes' contract).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "clearinghouse.urls"
WSGI_APPLICATION = "clearinghouse.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "clearinghouse.portal.context_processors.membership",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'clearinghouse.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, worker) share the file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTHENTICATION_BACKENDS = [
    # django-axes first: it refuses locked-out credentials before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "clearinghouse.accounts.backends.MemberAwareBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:dashboard"
LOGOUT_REDIRECT_URL = "portal:home"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# The encrypted object store. STORAGE_BACKEND/STORAGE_OPTIONS (JSON) select another Django storage,
# e.g. storages.backends.s3.S3Storage with {"bucket_name": ...}: it only ever receives ciphertext.
STORAGES = {
    "default": {"BACKEND": os.environ.get("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"),
                "OPTIONS": json.loads(os.environ.get("STORAGE_OPTIONS", "null"))
                or {"location": str(Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "store")))}},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Redis when configured (production, CI); an in-process cache otherwise.
REDIS_URL = os.environ.get("REDIS_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "clearinghouse@localhost")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "clearinghouse.accounts.authentication.APITokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "clearinghouse.core.exception_handler.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("THROTTLE_ANON", "60/minute"),
        "user": os.environ.get("THROTTLE_USER", "1200/minute"),
    },
    "NUM_PROXIES": int(os.environ.get("NUM_PROXIES", "0")) or None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Clearinghouse API",
    "DESCRIPTION": "Members, organisations, tokens and audit of the Clearinghouse consortium service.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Login throttling (django-axes): lock a username+IP pair after repeated failures.
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "portal/locked_out.html"
AXES_VERBOSE = False

# Celery: Redis in production; a SQLite-backed kombu transport when embedded, so a real worker
# process consumes real messages without any server to install.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
CELERY_RESULT_BACKEND = os.environ.get(
    "CELERY_RESULT_BACKEND", f"db+sqlite:///{VAR_DIR / 'celery-results.sqlite3'}"
)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"datasets.*": {"queue": "ingestion"}, "queries.*": {"queue": "dp"},
                      "federation.*": {"queue": "federation"}}
# Periodic tasks (celery beat): running federated jobs are reconciled with the SuperLink.
CELERY_BEAT_SCHEDULE = {
    "federation-reconcile": {"task": "federation.jobs_reconcile", "schedule": float(
        os.environ.get("FLOWER_RECONCILE_SECONDS", "30"))},
}
# How long a release request waits for the dp worker before answering 202 with the query's URL.
QUERY_WAIT_SECONDS = float(os.environ.get("QUERY_WAIT_SECONDS", "30"))

# Keys (see clearinghouse/core/keys.py). Workers: the keyring, a secret file or environment value in
# production. Web: only the staging public key uploads are encrypted to (not secret).
KEYRING_FILE = os.environ.get("KEYRING_FILE", "")
STAGING_PUBLIC_KEY_FILE = os.environ.get("STAGING_PUBLIC_KEY_FILE", "")
KEYRING_ALLOW_DEV = env_bool("KEYRING_ALLOW_DEV", True)
# Federated fine-tuning (Flower). FLOWER_SUPERLINK: host:port of the SuperLink's Control API
# (empty: federation disabled). FLOWER_ROOT_CERTIFICATES: the CA certificate of its TLS (empty:
# insecure, development only). FLOWER_SHARED_DIR: a directory the federation worker and the SuperLink
# host both see (job secrets and the ServerApp's outputs). FLOWER_CALLBACK_URL_BASE: how the ServerApp
# reaches this service's API for per-round metrics.
FLOWER_SUPERLINK = os.environ.get("FLOWER_SUPERLINK", "")
FLOWER_ROOT_CERTIFICATES = os.environ.get("FLOWER_ROOT_CERTIFICATES", "")
# The SuperLink address the members' agents connect to (its public name), when not FLOWER_SUPERLINK.
FLOWER_FLEET_ADDRESS = os.environ.get("FLOWER_FLEET_ADDRESS", "") or FLOWER_SUPERLINK
FLOWER_SHARED_DIR = Path(os.environ.get("FLOWER_SHARED_DIR", VAR_DIR / "flower"))
FLOWER_CALLBACK_URL_BASE = os.environ.get("FLOWER_CALLBACK_URL_BASE", "http://127.0.0.1:8000")
FLOWER_APP_DIR = Path(os.environ.get("FLOWER_APP_DIR", BASE_DIR / "federation" / "flower" / "app"))
# A job still 'scheduled' (never submitted) after this long is failed by the reconciler.
FLOWER_SUBMIT_TIMEOUT_SECONDS = float(os.environ.get("FLOWER_SUBMIT_TIMEOUT_SECONDS", "600"))
DATASET_UPLOAD_MAX_BYTES = int(os.environ.get("DATASET_UPLOAD_MAX_BYTES", str(1024 * 1024 * 1024)))
# Uploads stream through our encrypting handler; nothing is buffered to a plaintext temp file.
FILE_UPLOAD_HANDLERS = ["clearinghouse.datasets.uploads.EncryptingUploadHandler"]
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

INVITATION_VALIDITY = timedelta(days=int(os.environ.get("INVITATION_VALIDITY_DAYS", "14")))
API_TOKEN_MAX_DAYS = int(os.environ.get("API_TOKEN_MAX_DAYS", "365"))

# Logs: one JSON object per line on stderr (LOG_FORMAT=plain for a terminal), each with the request
# id that follows a request into its Celery tasks (clearinghouse/core/logs.py, clearinghouse/celery.py).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "clearinghouse.core.logs.RequestIdFilter"},
        "redact_paths": {"()": "clearinghouse.core.logs.RedactPathFilter"},
    },
    "formatters": {
        "json": {"()": "clearinghouse.core.logs.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": os.environ.get("LOG_FORMAT", "json"),
                             "filters": ["request_id", "redact_paths"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}

# Prometheus: /metrics answers a scraper that sends `Authorization: Bearer <METRICS_TOKEN>`; empty = off.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
