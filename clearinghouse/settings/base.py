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
from typing import Any

import dj_database_url

from clearinghouse.core import client_ip as _client_ip

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
CSRF_FAILURE_VIEW = "clearinghouse.core.views.api_csrf_failure"  # JSON under /api/, Django's page elsewhere

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from our static files, offline
    "axes",
    "clearinghouse.core",
    "clearinghouse.audit",
    "clearinghouse.accounts",
    "clearinghouse.organisations",
    "clearinghouse.datasets",
    "clearinghouse.queries",
    "clearinghouse.annotation",
    "clearinghouse.portal",
    "federation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "clearinghouse.core.middleware.RequestContextMiddleware",
    "clearinghouse.core.middleware.RefuseNulCharactersMiddleware",
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
        # Connections are kept between requests and tasks (a new PostgreSQL connection costs a few
        # milliseconds, and its backend starts with cold caches), checked before reuse.
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A statement run `DATABASE_PREPARE_THRESHOLD` times on a connection is prepared on the server:
    # PostgreSQL then stops planning it again (planning a select of a query with its dataset,
    # version and organisations costs ~1 ms, running it 0.25 ms). Prepared statements need the
    # parameters bound on the server and a connection that stays on one server backend: set the
    # variable to "" behind a pooler in transaction mode, unless it keeps prepared statements
    # (PgBouncer 1.21+ with max_prepared_statements).
    prepare_threshold = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5")
    if prepare_threshold:
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            {"server_side_binding": True, "prepare_threshold": int(prepare_threshold)}
        )
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
    "default": {
        "BACKEND": os.environ.get("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"),
        "OPTIONS": json.loads(os.environ.get("STORAGE_OPTIONS", "null"))
        or {"location": str(Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "store")))},
    },
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
    # DRF's JSON parser, also refusing what could not be stored (NUL, lone surrogates, too deep).
    "DEFAULT_PARSER_CLASSES": ["clearinghouse.core.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "clearinghouse.core.schema.AutoSchema",
    "EXCEPTION_HANDLER": "clearinghouse.core.exception_handler.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": [
        # Keyed on the client address of clearinghouse.core.client_ip (see TRUSTED_PROXIES).
        "clearinghouse.core.throttling.AnonRateThrottle",
        "clearinghouse.core.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("THROTTLE_ANON", "60/minute"),
        "user": os.environ.get("THROTTLE_USER", "1200/minute"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Clearinghouse API",
    "DESCRIPTION": "Members, organisations, tokens, audit, datasets, differentially private queries and federated "
    "jobs of the Clearinghouse consortium service. Lists are pages (`limit`/`offset`); every error "
    'answers `{"code", "detail", "fields"?}`.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ and /api/redoc/ load their scripts from our own static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Error statuses, pagination of lists and enum path segments: clearinghouse.core.schema.
    "ENUM_NAME_OVERRIDES": {
        "DatasetVersionStatusEnum": "clearinghouse.datasets.models.VersionStatus",
        "PrivacyMeasureEnum": "clearinghouse.queries.models.PrivacyMeasure",
        "QueryStatusEnum": "clearinghouse.queries.models.QueryStatus",
        "FederatedJobStateEnum": "federation.models.JobState",
        "FederatedJobStrategyEnum": "federation.models.Strategy.values",
        "FederatedParticipantStatusEnum": "federation.models.ParticipantStatus",
        "SuperNodeKeyStatusEnum": "federation.models.NodeKeyStatus",
        "AnnotationProjectStatusEnum": "clearinghouse.annotation.models.ProjectStatus",
        # ExportStatus has the same choices as RunStatus: one enum for both
        "AnnotationWorkStatusEnum": "clearinghouse.annotation.models.RunStatus",
        "AnnotationRunKindEnum": "clearinghouse.annotation.models.RunKind",
        "AnnotationLabelSourceEnum": "clearinghouse.annotation.models.LabelSource",
        "AnnotationDuplicateKindEnum": "clearinghouse.annotation.apis.DUPLICATE_KINDS",
    },
}

# The reverse proxies in front of the web processes (addresses or CIDR networks, comma-separated):
# X-Forwarded-For is read only from them, right to left, and the first address that is not one of them
# is the client's (clearinghouse.core.client_ip). Empty: the peer's own address, X-Forwarded-For ignored.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
_client_ip.parse_networks(TRUSTED_PROXIES)  # a malformed entry stops the start (ImproperlyConfigured)

# Login throttling (django-axes): lock a username+IP pair after repeated failures, where the IP is the
# client's (not the proxy's, which would lock the username for everyone behind it).
AXES_CLIENT_IP_CALLABLE = "clearinghouse.core.client_ip.axes_client_ip"
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
CELERY_TASK_ROUTES = {
    "datasets.*": {"queue": "ingestion"},
    "queries.*": {"queue": "dp"},
    "federation.*": {"queue": "federation"},
    # An annotator waits for these texts: the quick dp workers serve them; the long annotation work
    # (preparation, model runs, exports) reads whole versions, as ingestion does.
    "annotation.item_texts": {"queue": "dp"},
    "annotation.*": {"queue": "ingestion"},
    "audit.*": {"queue": "ingestion"},
}
# A message a worker took but never acknowledged (acks_late; the worker was killed) goes back to the
# queue after this long on Redis (kombu's default is an hour). It must exceed the longest task: the
# ingestion task's hard time limit (INGESTION_STUCK_SECONDS less a minute) is the longest. The embedded
# SQLite transport never redelivers; the beat sweepers below recover from lost messages on any broker.
# (Only transports that redeliver take the option: the SQLAlchemy one hands its options to create_engine.)
BROKER_VISIBILITY_TIMEOUT_SECONDS = int(os.environ.get("BROKER_VISIBILITY_TIMEOUT_SECONDS", "1800"))
_REDELIVERING = ("redis://", "rediss://", "sentinel://", "sqs://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"visibility_timeout": BROKER_VISIBILITY_TIMEOUT_SECONDS}
    if CELERY_BROKER_URL.startswith(_REDELIVERING)
    else {}
)
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = (
    {"visibility_timeout": BROKER_VISIBILITY_TIMEOUT_SECONDS, "retry_policy": {"timeout": 5.0}}
    if CELERY_RESULT_BACKEND.startswith(_REDELIVERING)
    else {}
)
CELERY_RESULT_EXPIRES = int(os.environ.get("CELERY_RESULT_EXPIRES_SECONDS", str(24 * 3600)))
# Periodic tasks (celery beat): running federated jobs are reconciled with the SuperLink.
CELERY_BEAT_SCHEDULE = {
    "federation-reconcile": {
        "task": "federation.jobs_reconcile",
        "schedule": float(os.environ.get("FLOWER_RECONCILE_SECONDS", "30")),
    },
}
# The staged tables a dp worker process keeps between queries, in MiB in all (tmpfs pages count against
# its memory), and at most 64; the last one used is always kept (0: only it). PUMS stages at ~33
# bytes a row (1M rows: ~33 MiB).
DP_TABLE_CACHE_BYTES = int(float(os.environ.get("DP_TABLE_CACHE_MB", "1024")) * 2**20)
# How long a release request waits for the dp worker before answering 202 with the query's URL.
QUERY_WAIT_SECONDS = float(os.environ.get("QUERY_WAIT_SECONDS", "30"))
# A query pending or running this long with no progress was left by a lost worker or task: beat hands
# it to a worker again (every QUERY_RECOVER_EVERY_SECONDS), and fails it after QUERY_MAX_RECOVERIES.
QUERY_STUCK_SECONDS = float(os.environ.get("QUERY_STUCK_SECONDS", "300"))
QUERY_MAX_RECOVERIES = int(os.environ.get("QUERY_MAX_RECOVERIES", "3"))
# Every so often the audit log records each stream's head in a checkpoint (when any moved), so that a
# stream deleted whole, or cut short, fails audit_verify (clearinghouse/audit/models.py).
CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
    "task": "audit.checkpoint",
    "schedule": float(os.environ.get("AUDIT_CHECKPOINT_SECONDS", "300")),
}
CELERY_BEAT_SCHEDULE["queries-recover-stuck"] = {
    "task": "queries.recover_stuck",
    "schedule": float(os.environ.get("QUERY_RECOVER_EVERY_SECONDS", "60")),
}

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
# Multipart file parts are never written anywhere by default: the global handler discards them. Only
# the dataset upload views (API and portal), once the user is authenticated and allowed to upload to
# that dataset, install the handler that encrypts the one `file` part into MEDIA_ROOT/staging (see
# clearinghouse/datasets/uploads.py); nothing is buffered to a plaintext temporary file.
FILE_UPLOAD_HANDLERS = ["clearinghouse.datasets.uploads.DiscardingUploadHandler"]
# Staging quota per organisation: versions awaiting ingestion (pending or validating), by number and
# by their uploads' bytes; an upload beyond either is refused (409 staging_quota_exceeded).
DATASET_STAGED_UPLOADS_MAX = int(os.environ.get("DATASET_STAGED_UPLOADS_MAX", "10"))
DATASET_STAGED_BYTES_MAX = int(os.environ.get("DATASET_STAGED_BYTES_MAX", str(4 * DATASET_UPLOAD_MAX_BYTES)))
# A staging file no version records (a request or transaction that died after staging it) is deleted
# by beat once it is this old (every DATASET_STAGING_SWEEP_EVERY_SECONDS).
DATASET_STAGING_ORPHAN_SECONDS = float(os.environ.get("DATASET_STAGING_ORPHAN_SECONDS", str(6 * 3600)))
# A failed version's upload is kept this long for a retry, then deleted (a retry then says upload_gone).
DATASET_FAILED_STAGING_SECONDS = float(os.environ.get("DATASET_FAILED_STAGING_SECONDS", str(7 * 24 * 3600)))
CELERY_BEAT_SCHEDULE["datasets-sweep-staging"] = {
    "task": "datasets.staging_sweep",
    "schedule": float(os.environ.get("DATASET_STAGING_SWEEP_EVERY_SECONDS", "3600")),
}
# A version pending (its task lost) or validating (its worker lost) this long is handed to a worker again
# by beat (every INGESTION_RECOVER_EVERY_SECONDS), and failed (ingestion_stuck) once
# INGESTION_MAX_ATTEMPTS runs have started without finishing; retry accepts such a version too.
INGESTION_STUCK_SECONDS = float(os.environ.get("INGESTION_STUCK_SECONDS", "1800"))
INGESTION_MAX_ATTEMPTS = int(os.environ.get("INGESTION_MAX_ATTEMPTS", "3"))
CELERY_BEAT_SCHEDULE["datasets-recover-stuck"] = {
    "task": "datasets.recover_stuck",
    "schedule": float(os.environ.get("INGESTION_RECOVER_EVERY_SECONDS", "60")),
}
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Annotation projects (clearinghouse/annotation). The encoder that embeds the items for the model:
# "minilm-l6" (packaged) or a local model directory. How long a page waits for a worker to return the
# texts it shows. The random calibration sample served beside the uncertain items. A project still
# preparing, or a run or export not finished, this long is queued again by beat (failed after
# ANNOTATION_MAX_ATTEMPTS). Like ingestion's, its tasks stop before BROKER_VISIBILITY_TIMEOUT_SECONDS.
ANNOTATION_BASE_MODEL = os.environ.get("ANNOTATION_BASE_MODEL", "minilm-l6")
ANNOTATION_TEXTS_WAIT_SECONDS = float(os.environ.get("ANNOTATION_TEXTS_WAIT_SECONDS", "10"))
ANNOTATION_CALIBRATION_ITEMS = int(os.environ.get("ANNOTATION_CALIBRATION_ITEMS", "150"))
ANNOTATION_STUCK_SECONDS = float(os.environ.get("ANNOTATION_STUCK_SECONDS", "1800"))
ANNOTATION_MAX_ATTEMPTS = int(os.environ.get("ANNOTATION_MAX_ATTEMPTS", "3"))
CELERY_BEAT_SCHEDULE["annotation-recover-stuck"] = {
    "task": "annotation.recover_stuck",
    "schedule": float(os.environ.get("ANNOTATION_RECOVER_EVERY_SECONDS", "120")),
}

INVITATION_VALIDITY = timedelta(days=int(os.environ.get("INVITATION_VALIDITY_DAYS", "14")))
API_TOKEN_MAX_DAYS = int(os.environ.get("API_TOKEN_MAX_DAYS", "365"))

# Logs: one JSON object per line on stderr (LOG_FORMAT=plain for a terminal), each with the request
# id that follows a request into its Celery tasks (clearinghouse/core/logs.py, clearinghouse/celery.py).
LOGGING: dict[str, Any] = {
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
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": os.environ.get("LOG_FORMAT", "json"),
            "filters": ["request_id", "redact_paths"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}

# Prometheus: /metrics answers a scraper that sends `Authorization: Bearer <METRICS_TOKEN>`; empty = off.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
