"""Writes for datasets: registration, schemas, uploads, ingestion, grants and data-use agreements."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from clearinghouse.audit.services import OWNER_ONLY, audit_lock, audit_record
from clearinghouse.core.enqueue import enqueue
from clearinghouse.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.core.keys import keyring
from clearinghouse.core.metrics import INGESTION_BYTES, count_on_commit
from clearinghouse.core.text import clean_name, clean_slug
from clearinghouse.crypto.errors import CryptoError, KeyringError
from clearinghouse.organisations.models import Organisation, OrganisationStatus
from clearinghouse.organisations.roles import MANAGE_DATASETS, RUN_QUERIES
from clearinghouse.organisations.selectors import membership_active, require_capability

from . import storage
from .ingest import (
    REPAIRS,
    IngestError,
    Repair,
    check,
    content_digests,
    infer_schema,
    read_upload,
)
from .models import (
    ACCESS_REQUEST_NOTE_MAX,
    ACCESS_REQUEST_REASON_MAX,
    AccessRequest,
    AccessRequestStatus,
    AgreementAcceptance,
    Dataset,
    DatasetGrant,
    DatasetVersion,
    DataUseAgreement,
    GrantPurpose,
    VersionStatus,
)
from .schema import DatasetSchema, SchemaError
from .selectors import agreement_current, dataset_require_owner, dataset_upload_quota_check
from .uploads import STAGING_DIR, EncryptedUpload, new_staging_file

logger = logging.getLogger(__name__)
FORMATS = ("csv", "parquet")


class SchemaRejected(ValidationFailed):
    """A schema document the schema model refused. `path` says where (`columns[2].lower`,
    `privacy_unit.column`; empty for the document as a whole) and `problem` what, without the path:
    the portal's schema form puts it on that column's field."""

    def __init__(self, exc: SchemaError):
        super().__init__(f"schema: {exc.message}", code=exc.code, fields={"schema": [exc.message]})
        self.path = exc.path
        self.problem = exc.message.removeprefix(f"{exc.path}: ") if exc.path else exc.message


def _schema(value: Any) -> DatasetSchema:
    try:
        return DatasetSchema.parse(value) if isinstance(value, str) else DatasetSchema.from_dict(value)
    except SchemaError as exc:
        raise SchemaRejected(exc) from None


@transaction.atomic
def dataset_register(
    *,
    actor: Any,
    organisation: Organisation,
    name: str,
    slug: str,
    description: str = "",
    schema: dict | str | None = None,
) -> Dataset:
    require_capability(actor=actor, organisation=organisation, capability=MANAGE_DATASETS)
    name = clean_name(name, field="name", max_length=120)
    slug = clean_slug(slug)
    description = (
        clean_name(description, field="description", max_length=5000, min_length=0) if description else ""
    )
    parsed = _schema(schema) if schema is not None else None
    if Dataset.objects.filter(organisation=organisation, slug=slug).exists():
        raise Conflict("Your organisation already has a dataset with this slug.", code="duplicate_slug")
    dataset = Dataset.objects.create(
        organisation=organisation,
        name=name,
        slug=slug,
        description=description,
        schema=parsed.to_dict() if parsed else None,
        schema_confirmed=parsed is not None,
        created_by=actor,
    )
    audit_record(
        actor=actor,
        action="dataset.registered",
        organisation=organisation,
        target=dataset,
        extra={"slug": slug, "schema_declared": parsed is not None},
    )
    return dataset


@transaction.atomic
def dataset_schema_set(*, actor: Any, dataset: Dataset, schema: dict | str) -> Dataset:
    """Declares or confirms the schema. Later versions are checked against it; earlier versions
    keep the copy they were checked against. Versions awaiting a schema (a first upload, from which
    a schema was proposed) are validated against it at once: queued when this commits."""
    dataset_require_owner(actor=actor, dataset=dataset)
    parsed = _schema(schema)
    audit_lock(dataset.organisation_id)  # first: the lock order of every write (see audit_lock)
    dataset = Dataset.objects.select_for_update(no_key=True).get(pk=dataset.pk)
    dataset.schema = parsed.to_dict()
    dataset.schema_confirmed = True
    dataset.save(update_fields=["schema", "schema_confirmed"])
    awaiting = list(
        DatasetVersion.objects.select_for_update(no_key=True)
        .filter(dataset=dataset, status=VersionStatus.AWAITING_SCHEMA)
        .exclude(staging_path="")
        .order_by("number")
    )
    audit_record(
        actor=actor,
        action="dataset.schema_confirmed",
        organisation=dataset.organisation,
        target=dataset,
        extra={"columns": parsed.names, "revalidating": [version.number for version in awaiting]},
    )
    for version in awaiting:
        version.dataset = dataset
        _requeue(version, actor=actor, action="dataset_version.revalidating", extra={"reason": "schema"})
    return dataset


def dataset_version_create(
    *,
    actor: Any,
    dataset: Dataset,
    upload: EncryptedUpload,
    fmt: str = "",
    delimiter: str = "",
    quote_char: str = '"',
    has_header: bool = True,
    repair: str = "none",
) -> DatasetVersion:
    """Records an uploaded (already encrypted) file as a new pending version and queues its ingestion.
    Whenever this does not end with the version recorded (refused, or any error rolling it back), the
    staged file is deleted: no version would ever read it."""
    try:
        with transaction.atomic():
            return _version_record(
                actor=actor,
                dataset=dataset,
                upload=upload,
                fmt=fmt,
                delimiter=delimiter,
                quote_char=quote_char,
                has_header=has_header,
                repair=repair,
            )
    except BaseException:
        upload.discard()
        raise


def _version_record(
    *,
    actor: Any,
    dataset: Dataset,
    upload: EncryptedUpload,
    fmt: str,
    delimiter: str,
    quote_char: str,
    has_header: bool,
    repair: str,
) -> DatasetVersion:
    # First: this transaction locks the dataset and counts the organisation's waiting uploads.
    audit_lock(dataset.organisation_id)
    dataset_require_owner(actor=actor, dataset=dataset)
    fmt = fmt or ("parquet" if upload.name.lower().endswith(".parquet") else "csv")
    if fmt not in FORMATS:
        raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}.", code="invalid_format")
    if delimiter and (
        len(delimiter) != 1
        or (not delimiter.isprintable() and delimiter != "\t")
        or delimiter in {'"', "'", "\r", "\n"}
    ):
        raise ValidationFailed(
            "delimiter must be one printable character (\\t for tab).", code="invalid_delimiter"
        )
    if quote_char not in {'"', "'", ""}:
        raise ValidationFailed("quote must be a double quote, a single quote or none.", code="invalid_quote")
    if not has_header and not dataset.schema_confirmed:
        raise ValidationFailed(
            "A file without a header row needs a confirmed schema to name its columns.",
            code="header_required",
        )
    if repair not in REPAIRS:
        raise ValidationFailed(f"repair must be one of {', '.join(REPAIRS)}.", code="invalid_repair")
    if upload.size == 0:
        raise ValidationFailed("The file is empty.", code="empty_file")
    dataset_upload_quota_check(organisation_id=dataset.organisation_id, adding_bytes=upload.size)
    dataset = Dataset.objects.select_for_update(no_key=True).get(pk=dataset.pk)
    last = dataset.versions.order_by("-number").values_list("number", flat=True).first() or 0
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=last + 1,
        source_format=fmt,
        source_name=upload.name[:255],
        source_bytes=upload.size,
        delimiter=delimiter,
        quote_char=quote_char,
        has_header=has_header,
        repair=repair,
        schema=_schema_copy(dataset),
        staging_path=upload.staging_name,
        kek_id=upload.kek_id,
        created_by=actor,
        enqueued_at=timezone.now(),
    )
    audit_record(
        actor=actor,
        action="dataset_version.uploaded",
        organisation=dataset.organisation,
        target=version,
        extra={"number": version.number, "format": fmt, OWNER_ONLY: {"bytes": upload.size}},
    )
    _enqueue_on_commit(version.pk)
    return version


def _enqueue_on_commit(version_id: int) -> None:
    # robust: a broker outage must not fail the request that recorded the version (the version is
    # committed; the recovery sweep queues it once the broker is back)
    transaction.on_commit(lambda: enqueue("datasets.ingest_version", version_id), robust=True)


def dataset_version_import(
    *,
    actor: Any,
    dataset: Dataset,
    data: bytes,
    name: str,
    fmt: str = "",
    delimiter: str = "",
    quote_char: str = '"',
    repair: str = "none",
) -> DatasetVersion:
    """A server-side import (demo, bulk loads): the bytes are encrypted into a staging file exactly as
    an HTTP upload would be (to the staging public key), then recorded as a new version (its
    ingestion queued like any other)."""
    staging, target, encryptor = new_staging_file()
    try:
        with target:
            encryptor.write(data)
            info = encryptor.finish()
    except BaseException:
        default_storage.delete(staging)
        raise
    upload = EncryptedUpload(
        staging_name=staging,
        name=name,
        content_type="application/octet-stream",
        size=len(data),
        kek_id=info.kek_id,
    )
    return dataset_version_create(
        actor=actor,
        dataset=dataset,
        upload=upload,
        fmt=fmt,
        delimiter=delimiter,
        quote_char=quote_char,
        repair=repair,
    )


def _stale_before() -> datetime:
    return timezone.now() - timedelta(seconds=settings.INGESTION_STUCK_SECONDS)


def _validation_stuck(version: DatasetVersion, stale_before: datetime) -> bool:
    """A validating version whose run started before `stale_before`: its worker is presumed lost (a
    live run finishes well within INGESTION_STUCK_SECONDS: the task's hard time limit is below it)."""
    return version.status == VersionStatus.VALIDATING and (
        version.validation_started_at is None or version.validation_started_at < stale_before
    )


@transaction.atomic
def dataset_version_retry(
    *, actor: Any, version: DatasetVersion, repair: str | None = None
) -> DatasetVersion:
    """Runs ingestion again (after the schema was confirmed, or with a repair chosen); also takes a
    version whose validation has been running past INGESTION_STUCK_SECONDS (its worker was lost)."""
    dataset_require_owner(actor=actor, dataset=version.dataset)
    audit_lock(version.dataset.organisation_id)
    version = DatasetVersion.objects.select_for_update(no_key=True).get(pk=version.pk)
    stuck = _validation_stuck(version, _stale_before())
    retryable = {VersionStatus.FAILED, VersionStatus.PENDING, VersionStatus.AWAITING_SCHEMA}
    if version.status not in retryable and not stuck:
        detail = (
            f" validation started at {version.validation_started_at:%Y-%m-%d %H:%M:%S} UTC; a run still "
            f"going after {int(settings.INGESTION_STUCK_SECONDS)} s can be retried"
            if version.status == VersionStatus.VALIDATING and version.validation_started_at
            else ""
        )
        raise Conflict(
            "Only failed or stuck versions can be retried "
            f"(this one is {version.status}{';' if detail else ''}{detail}).",
            code="not_retryable",
        )
    if not version.staging_path:
        raise Conflict("The upload of this version is gone; upload the file again.", code="upload_gone")
    if repair is not None:
        if repair not in REPAIRS:
            raise ValidationFailed(f"repair must be one of {', '.join(REPAIRS)}.", code="invalid_repair")
        version.repair = repair
    return _requeue(version, actor=actor, action="dataset_version.retried", extra={"repair": version.repair})


def _schema_copy(dataset: Dataset) -> dict:
    """The schema a new ingestion cycle checks a version against: the confirmed schema, else none —
    never a proposal read from data (a version checked against it would store, and queries would be
    calibrated on, bounds taken from the rows). A version without one proposes a schema, or, once
    one is confirmed, is queued again against it (`_schema_proposed`)."""
    return (dataset.schema or {}) if dataset.schema_confirmed else {}


def _requeue(version: DatasetVersion, *, actor: Any, action: str, extra: dict) -> DatasetVersion:
    """Inside the caller's transaction, on a locked row that keeps its upload: a new cycle of
    ingestion against the dataset's current schema, queued when the transaction commits."""
    previous = version.status
    version.schema = _schema_copy(version.dataset)
    version.status = VersionStatus.PENDING
    version.error_code = version.error_message = ""
    # A new cycle of attempts; a run still holding the old claim can no longer finish the version.
    version.attempts = 0
    version.ingest_claim = ""
    version.validation_started_at = None
    version.enqueued_at = timezone.now()
    version.save(
        update_fields=[
            "repair",
            "schema",
            "status",
            "error_code",
            "error_message",
            "attempts",
            "ingest_claim",
            "validation_started_at",
            "enqueued_at",
        ]
    )
    audit_record(
        actor=actor,
        action=action,
        organisation=version.dataset.organisation,
        target=version,
        extra={**extra, "was": previous},
    )
    _enqueue_on_commit(version.pk)
    return version


def dataset_version_ingest(*, version_id: int) -> DatasetVersion:
    """Worker side: decrypt the staged upload in memory, check it against the schema, store the
    normalised table encrypted. Safe to run again after a crash at any point, and when two runs race:
    a run first claims the version (compare-and-set from pending, or from a validating run presumed
    lost), and only the run holding the current claim may finish it. Whatever goes wrong in a run
    ends the version failed with a code; a run that dies outright is recovered by
    `dataset_versions_recover`."""
    claimed = _ingest_claim(version_id)
    if claimed is None:  # finished, taken by a live run, or out of attempts: a duplicate delivery
        return DatasetVersion.objects.select_related("dataset__organisation").get(pk=version_id)
    version, claim = claimed
    try:
        return _ingest_run(version, claim)
    except KeyringError:
        logger.error("Dataset version %s: the worker's keyring cannot decrypt uploads", version.pk)
        return _version_failed(
            version,
            "keyring_unavailable",
            "The ingestion worker could not use its keyring "
            "(an operator must fix its configuration); retry this version afterwards.",
            claim=claim,
        )
    except Exception as exc:  # noqa: BLE001 (any failure must end the version failed, never stuck)
        # The exception's text may quote the data: only its type is logged and shown.
        logger.error("Dataset version %s: ingestion failed unexpectedly (%s)", version.pk, type(exc).__name__)
        return _version_failed(
            version,
            "ingestion_error",
            f"Validation failed unexpectedly ({type(exc).__name__}); "
            "retry this version, and upload the file again if it fails again.",
            claim=claim,
        )


def _ingest_claim(version_id: int) -> tuple[DatasetVersion, str] | None:
    claim = uuid.uuid4().hex
    with transaction.atomic():
        if not DatasetVersion.objects.filter(pk=version_id).exists():
            return None
        version = _locked_version(version_id)
        if version.status != VersionStatus.PENDING and not _validation_stuck(version, _stale_before()):
            return None
        if version.attempts >= settings.INGESTION_MAX_ATTEMPTS:
            _mark_stuck_failed(version)
            return None
        now = timezone.now()
        claimed = DatasetVersion.objects.filter(
            pk=version.pk, status=version.status, ingest_claim=version.ingest_claim
        ).update(
            status=VersionStatus.VALIDATING,
            ingest_claim=claim,
            validation_started_at=now,
            attempts=F("attempts") + 1,
        )
        if not claimed:
            return None
        version.refresh_from_db()
        audit_record(
            actor=None,
            action="dataset_version.validation_started",
            organisation=version.dataset.organisation,
            target=version,
            extra={"attempt": version.attempts},
        )
    return version, claim


def _ingest_run(version: DatasetVersion, claim: str) -> DatasetVersion:
    dataset = version.dataset
    try:
        plaintext = storage.read_staging(version.staging_path)
    except CryptoError as exc:
        if isinstance(exc, KeyringError):
            raise  # the worker's keyring is misconfigured: not the upload's fault, so not "corrupt"
        return _version_corrupt(
            version, "The uploaded file failed authentication: it was altered in storage.", claim=claim
        )
    except FileNotFoundError:
        return _version_failed(
            version, "upload_gone", "The uploaded file is gone; upload it again.", claim=claim
        )
    try:
        schema = (
            DatasetSchema.from_dict(version.schema) if dataset.schema_confirmed and version.schema else None
        )
        column_names = None
        if not version.has_header:
            # A file without a header row needs a confirmed schema (`dataset_version_create`).
            assert schema is not None
            column_names = schema.names
        fmt: Literal["csv", "parquet"] = "parquet" if version.source_format == "parquet" else "csv"
        # The frame, and how it was parsed (`parse_options`), from one scan of the bytes.
        raw, parse = read_upload(
            plaintext,
            fmt=fmt,  # as `read_raw` reads it: Parquet, or else CSV
            delimiter=version.delimiter or None,
            column_names=column_names,
            quote_char=version.quote_char or None,
            schema=schema,
        )
        del plaintext
        if schema is None:
            return _schema_proposed(version, infer_schema(raw), claim=claim)
        result = check(raw, schema, repair=cast(Repair, version.repair))  # `check` refuses any other value
        digests = content_digests(result.table, schema, parse=parse)
    except IngestError as exc:
        return _version_failed(version, exc.code, exc.message, report=exc.report, claim=claim, from_data=True)
    ids = {"organisation_id": dataset.organisation_id, "dataset_id": dataset.pk, "number": version.number}
    name = storage.data_file_name(**ids, claim=claim)
    info = storage.write_table(name, storage.data_context(**ids), result.table)
    with transaction.atomic():
        version = _locked_version(version.pk)
        if not _holds(version, claim):
            lost = True
        else:
            lost = False
            staging = version.staging_path
            version.status = VersionStatus.READY
            version.data_path = name
            version.data_bytes = info.ciphertext_size
            version.kek_id = info.kek_id
            version.row_count = result.table.height
            version.quality_report = result.report
            version.content_digests = digests
            version.staging_path = ""
            version.ingest_claim = ""
            version.finished_at = timezone.now()
            version.save()
            audit_record(
                actor=None,
                action="dataset_version.ready",
                organisation=dataset.organisation,
                target=version,
                extra={
                    "repair": version.repair,
                    "attempt": version.attempts,
                    OWNER_ONLY: {"rows": version.row_count, "violations": result.report["violations"]},
                },
            )
            count_on_commit(INGESTION_BYTES.labels(outcome="ready"), version.source_bytes)
            # Clean-ups, best effort: a file left behind is only unused ciphertext.
            transaction.on_commit(lambda: default_storage.delete(staging), robust=True)
            transaction.on_commit(
                lambda: storage.remove_data_files(storage.version_folder(**ids), keep=name), robust=True
            )
    if lost:  # another run took the version over: its result (or a retry) stands, not this one's
        default_storage.delete(name)
        logger.info("Dataset version %s: a run that lost its claim discarded its result", version.pk)
    return version


def _version_owner(pk: int) -> int:
    """The id of the organisation that owns the version's dataset (never changes): whose audit stream
    the version's events go to."""
    return DatasetVersion.objects.filter(pk=pk).values_list("dataset__organisation_id", flat=True).get()


def _locked_version(pk: int) -> DatasetVersion:
    """The version, its row locked until the caller's transaction ends (only its row, not those of
    its dataset and organisation, which come along for reading). The audit head first (see audit_lock)."""
    audit_lock(_version_owner(pk))
    return (
        DatasetVersion.objects.select_for_update(of=("self",), no_key=True)
        .select_related("dataset__organisation")
        .get(pk=pk)
    )


def _holds(version: DatasetVersion, claim: str | None) -> bool:
    """Whether a run holding `claim` may still finish `version` (None: not a run; always may)."""
    return claim is None or (version.status == VersionStatus.VALIDATING and version.ingest_claim == claim)


def _mark_failed(
    version: DatasetVersion,
    code: str,
    message: str,
    *,
    report: dict | None = None,
    extra: dict | None = None,
    from_data: bool = False,
) -> None:
    """Inside the caller's transaction, on a locked row. `from_data`: the code says something about
    the rows (out of bounds, ragged, NUL bytes, ...): the audit log shows it to the owner alone."""
    version.status = VersionStatus.FAILED
    version.error_code = code
    version.error_message = message
    version.quality_report = report
    version.ingest_claim = ""
    version.finished_at = timezone.now()
    version.save()
    details = {"code": code, **(extra or {})}
    audit_record(
        actor=None,
        action="dataset_version.failed",
        organisation=version.dataset.organisation,
        target=version,
        extra={"attempts": version.attempts, **({OWNER_ONLY: details} if from_data else details)},
    )
    count_on_commit(INGESTION_BYTES.labels(outcome="failed"), version.source_bytes)
    ids = {
        "organisation_id": version.dataset.organisation_id,
        "dataset_id": version.dataset_id,
        "number": version.number,
    }
    transaction.on_commit(lambda: storage.remove_data_files(storage.version_folder(**ids)), robust=True)


def _mark_stuck_failed(version: DatasetVersion) -> None:
    _mark_failed(
        version,
        "ingestion_stuck",
        f"Validation did not finish in {version.attempts} attempts (each run stopped without a result: its "
        "worker was lost or ran out of time or memory). Retry it, or upload a smaller or simpler file.",
    )


def _version_failed(
    version: DatasetVersion,
    code: str,
    message: str,
    *,
    report: dict | None = None,
    claim: str | None = None,
    from_data: bool = False,
) -> DatasetVersion:
    with transaction.atomic():
        version = _locked_version(version.pk)
        if _holds(version, claim):
            _mark_failed(version, code, message, report=report, from_data=from_data)
    return version


def _schema_proposed(version: DatasetVersion, proposal: dict, *, claim: str | None = None) -> DatasetVersion:
    with transaction.atomic():
        audit_lock(_version_owner(version.pk))  # first (the version and then the dataset are locked below)
        version = _locked_version(version.pk)
        if not _holds(version, claim):
            return version
        dataset = Dataset.objects.select_for_update(no_key=True).get(pk=version.dataset_id)
        version.dataset = dataset
        if dataset.schema_confirmed:
            # The steward confirmed a schema while this run was reading the file: check it against that.
            return _requeue(
                version, actor=None, action="dataset_version.revalidating", extra={"reason": "schema"}
            )
        # The latest upload's proposal replaces an earlier one (a confirmed schema is never replaced).
        dataset.schema = proposal["schema"]
        dataset.save(update_fields=["schema"])
        # Not a failure: the version waits, its upload kept, until the steward confirms a schema
        # (`dataset_schema_set` then queues it again).
        version.status = VersionStatus.AWAITING_SCHEMA
        version.error_code = "schema_unconfirmed"
        version.error_message = (
            "A schema was proposed from this upload. " + proposal["warning"] + " This version is "
            "validated as soon as the schema is confirmed."
        )
        version.quality_report = None
        version.ingest_claim = ""
        version.finished_at = timezone.now()
        version.save()
        audit_record(
            actor=None,
            action="dataset_version.awaiting_schema",
            organisation=dataset.organisation,
            target=version,
            extra={"number": version.number, "schema_proposed": True},
        )
    return version


def _version_corrupt(version: DatasetVersion, message: str, *, claim: str | None = None) -> DatasetVersion:
    logger.error("Dataset version %s failed authentication on decryption", version.pk)
    with transaction.atomic():
        version = _locked_version(version.pk)
        if not _holds(version, claim):
            return version
        version.status = VersionStatus.CORRUPT
        version.error_code = "integrity_error"
        version.error_message = message
        version.ingest_claim = ""
        version.finished_at = timezone.now()
        version.save()
        audit_record(
            actor=None,
            action="dataset_version.corrupt",
            organisation=version.dataset.organisation,
            target=version,
            extra={"number": version.number},
        )
    return version


def dataset_version_mark_corrupt(*, version: DatasetVersion) -> DatasetVersion:
    """Called by any worker whose decryption of a ready version fails authentication."""
    return _version_corrupt(version, "The stored data failed authentication: it was altered in storage.")


def dataset_versions_recover() -> dict[str, int]:
    """Beat: versions whose ingestion was lost. Pending past INGESTION_STUCK_SECONDS since queued (the
    message was lost, e.g. the embedded broker never redelivers) or validating past it since their
    run started (its worker was killed) are queued again; a validating one whose runs already reached
    INGESTION_MAX_ATTEMPTS is failed (ingestion_stuck) instead, so that no version waits forever."""
    stale_before = _stale_before()
    candidates = DatasetVersion.objects.annotate(queued=Coalesce("enqueued_at", "created_at")).filter(
        Q(status=VersionStatus.PENDING, queued__lt=stale_before)
        | Q(status=VersionStatus.VALIDATING)
        & (Q(validation_started_at__isnull=True) | Q(validation_started_at__lt=stale_before))
    )
    counts = {"requeued": 0, "failed": 0}
    for pk in list(candidates.order_by("pk").values_list("pk", flat=True)[:500]):
        with transaction.atomic():
            version = _locked_version(pk)
            queued = version.enqueued_at or version.created_at
            if not (
                (version.status == VersionStatus.PENDING and queued < stale_before)
                or _validation_stuck(version, stale_before)
            ):
                continue  # it moved on meanwhile
            if (
                version.status == VersionStatus.VALIDATING
                and version.attempts >= settings.INGESTION_MAX_ATTEMPTS
            ):
                _mark_stuck_failed(version)
                counts["failed"] += 1
                continue
            previous = version.status
            version.status = VersionStatus.PENDING
            version.ingest_claim = ""  # a run still holding the old claim can no longer finish it
            version.enqueued_at = timezone.now()
            version.save(update_fields=["status", "ingest_claim", "enqueued_at"])
            audit_record(
                actor=None,
                action="dataset_version.requeued",
                organisation=version.dataset.organisation,
                target=version,
                extra={"was": previous, "attempts": version.attempts},
            )
            _enqueue_on_commit(version.pk)
            counts["requeued"] += 1
    if any(counts.values()):
        logger.warning("Ingestion recovery: %(requeued)d version(s) queued again, %(failed)d failed", counts)
    return counts


def dataset_staging_sweep() -> dict[str, int]:
    """Beat: deletes staging files that no version records and that have not been written to for
    DATASET_STAGING_ORPHAN_SECONDS (left by a process killed mid-request, or by a transaction rolled
    back after its request ended; a file still streaming in is younger). Files of versions, failed
    ones included (they can be retried), stay."""
    cutoff = timezone.now() - timedelta(seconds=settings.DATASET_STAGING_ORPHAN_SECONDS)
    try:
        _, names = default_storage.listdir(STAGING_DIR)
    except FileNotFoundError:
        names = []
    paths = [f"{STAGING_DIR}/{name}" for name in names]
    deleted = 0
    for start in range(0, len(paths), 500):
        batch = paths[start : start + 500]
        recorded = set(
            DatasetVersion.objects.filter(staging_path__in=batch).values_list("staging_path", flat=True)
        )
        for path in batch:
            if path in recorded:
                continue
            try:
                if default_storage.get_modified_time(path) >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            default_storage.delete(path)
            deleted += 1
    expired = _failed_staging_expire()
    if deleted:
        with transaction.atomic():
            audit_record(actor=None, action="dataset_staging.swept", extra={"deleted": deleted})
    return {"deleted": deleted, "expired": expired}


def _delete_on_commit(name: str) -> None:
    """Deletes the stored file `name` once the transaction commits (a failure is logged, not raised)."""
    transaction.on_commit(lambda: default_storage.delete(name), robust=True)


def _failed_staging_expire() -> int:
    """A failed version keeps its upload so that it can be retried, for DATASET_FAILED_STAGING_SECONDS;
    then the upload is deleted (a retry answers `upload_gone`), so failed uploads cannot fill the disk.
    A version awaiting a schema for that long loses its upload too, and fails (`upload_gone`)."""
    cutoff = timezone.now() - timedelta(seconds=settings.DATASET_FAILED_STAGING_SECONDS)
    kept = {VersionStatus.FAILED, VersionStatus.AWAITING_SCHEMA}
    expired = 0
    for pk in (
        DatasetVersion.objects.filter(status__in=kept, finished_at__lt=cutoff)
        .exclude(staging_path="")
        .values_list("pk", flat=True)[:500]
    ):
        with transaction.atomic():
            version = _locked_version(pk)
            if version.status not in kept or not version.staging_path:
                continue
            path, version.staging_path = version.staging_path, ""
            version.save(update_fields=["staging_path"])
            if version.status == VersionStatus.AWAITING_SCHEMA:
                _mark_failed(
                    version,
                    "upload_gone",
                    "The upload waited for a confirmed schema too long and was deleted; upload it again.",
                )
            audit_record(
                actor=None,
                action="dataset_version.upload_expired",
                organisation=version.dataset.organisation,
                target=version,
                extra={"number": version.number},
            )
            _delete_on_commit(path)
        expired += 1
    return expired


@transaction.atomic
def dataset_grant_create(
    *, actor: Any, dataset: Dataset, organisation: Organisation, purpose: str, answering: int | None = None
) -> DatasetGrant:
    """The owner grants an approved organisation a use of the dataset. The organisation's pending
    access requests for that use are answered by it (approved, linked to the grant), so none stays
    open to be declined while access is held; `answering`: the request `access_request_decide` is
    approving itself (it records that decision)."""
    dataset_require_owner(actor=actor, dataset=dataset)
    if purpose not in GrantPurpose.values:
        raise ValidationFailed(
            f"purpose must be one of {', '.join(GrantPurpose.values)}.", code="invalid_purpose"
        )
    if organisation.pk == dataset.organisation_id:
        raise ValidationFailed("The owner organisation needs no grant.", code="owner_grant")
    if organisation.status != OrganisationStatus.APPROVED:
        raise NotFound("Organisation not found.")
    # First: this transaction locks the organisation's pending access requests below.
    audit_lock(dataset.organisation_id)
    if DatasetGrant.objects.filter(
        dataset=dataset, organisation=organisation, purpose=purpose, revoked_at__isnull=True
    ).exists():
        raise Conflict("This organisation already has this grant.", code="duplicate_grant")
    grant = DatasetGrant.objects.create(
        dataset=dataset, organisation=organisation, purpose=purpose, granted_by=actor
    )
    audit_record(
        actor=actor,
        action="dataset_grant.created",
        organisation=dataset.organisation,
        target=grant,
        extra={"grantee": organisation.slug, "purpose": purpose, "dataset": dataset.slug},
    )
    answered = AccessRequest.objects.select_for_update(no_key=True, of=("self",)).filter(
        dataset=dataset, organisation=organisation, purpose=purpose, status=AccessRequestStatus.PENDING
    )
    if answering is not None:
        answered = answered.exclude(pk=answering)
    now = timezone.now()
    for request in answered:
        request.status = AccessRequestStatus.APPROVED
        request.decided_by, request.decided_at, request.updated_at = actor, now, now
        request.grant = grant
        request.decision_note = "Granted directly by the owner."
        request.save(
            update_fields=["status", "decided_by", "decided_at", "decision_note", "grant", "updated_at"]
        )
        audit_record(
            actor=actor,
            action="access_request.approved",
            organisation=dataset.organisation,
            target=request,
            extra={
                "dataset": dataset.slug,
                "requester": organisation.slug,
                "purpose": purpose,
                "grant": grant.pk,
            },
        )
    return grant


@transaction.atomic
def dataset_grant_revoke(*, actor: Any, grant: DatasetGrant) -> DatasetGrant:
    """Ends a grant. Who may, decided here for the API and the portal alike: the owner organisation's
    members with the dataset capability, and the consortium's operators.

    Operators may revoke a grant (never create one): withdrawing access is a safety action. They
    already see every grant (`dataset_grant_list`) and can stop a whole organisation's access by
    suspending it; revoking one grant is the narrower tool. It shows them nothing derived from the
    data (docs/data-exposure.md) and is audited under their name in the owner organisation's log.
    Whom to share with stays the owner's decision (`dataset_grant_create`)."""
    if not getattr(actor, "is_operator", False):
        dataset_require_owner(actor=actor, dataset=grant.dataset)
    audit_lock(grant.dataset.organisation_id)  # first: the lock order of every write (see audit_lock)
    grant = DatasetGrant.objects.select_for_update(no_key=True).get(pk=grant.pk)
    if grant.revoked_at is not None:
        raise Conflict("This grant is already revoked.", code="grant_revoked")
    grant.revoked_at = timezone.now()
    grant.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action="dataset_grant.revoked",
        organisation=grant.dataset.organisation,
        target=grant,
        extra={"grantee": grant.organisation.slug, "purpose": grant.purpose},
    )
    return grant


@transaction.atomic
def agreement_publish(*, actor: Any, dataset: Dataset, text: str) -> DataUseAgreement:
    dataset_require_owner(actor=actor, dataset=dataset)
    text = clean_name(text, field="text", max_length=50_000) if text else ""
    if not text:
        raise ValidationFailed("The agreement text is required.", code="invalid_agreement")
    audit_lock(dataset.organisation_id)  # first: the lock order of every write (see audit_lock)
    Dataset.objects.select_for_update(no_key=True).get(pk=dataset.pk)
    current = agreement_current(dataset=dataset)
    agreement = DataUseAgreement.objects.create(
        dataset=dataset, version=(current.version + 1) if current else 1, text=text, created_by=actor
    )
    audit_record(
        actor=actor,
        action="agreement.published",
        organisation=dataset.organisation,
        target=agreement,
        extra={"dataset": dataset.slug, "version": agreement.version},
    )
    return agreement


@transaction.atomic
def agreement_accept(*, actor: Any, dataset: Dataset, version: int) -> AgreementAcceptance:
    """An analyst accepts the agreement version they were shown; accepting an outdated one fails."""
    membership = membership_active(user=actor)
    if membership is None:
        raise NotFound("Dataset not found.")
    current = agreement_current(dataset=dataset)
    if current is None:
        raise NotFound("This dataset has no data-use agreement.", code="no_agreement")
    if current.version != version:
        raise Conflict(
            f"Version {current.version} is current; read and accept that one.", code="agreement_outdated"
        )
    acceptance, created = AgreementAcceptance.objects.get_or_create(agreement=current, user=actor)
    if created:
        audit_record(
            actor=actor,
            action="agreement.accepted",
            organisation=membership.organisation,
            target=acceptance,
            extra={"dataset": f"{dataset.organisation.slug}/{dataset.slug}", "version": current.version},
        )
    return acceptance


def dataset_files_rewrap(*, actor: Any = None) -> dict[str, int]:
    """Re-wraps the data key of every stored version file under the keyring's current KEK; staged
    uploads (wrapped to a staging key) move under the current KEK too.

    Only headers change (segments are copied byte for byte); each file is replaced atomically, so a
    crash leaves either the old header or the new one, both readable while the old key is kept."""
    current = keyring()
    counts = {"rewrapped": 0, "already_current": 0}
    versions = DatasetVersion.objects.exclude(kek_id=current.current_id).exclude(
        data_path="", staging_path=""
    )
    for version in versions.iterator():
        for name in filter(None, [version.data_path, version.staging_path]):
            storage.rewrap_file(name, current)
            counts["rewrapped"] += 1
        DatasetVersion.objects.filter(pk=version.pk).update(kek_id=current.current_id)
    counts["already_current"] = DatasetVersion.objects.filter(kek_id=current.current_id).count()
    with transaction.atomic():
        audit_record(actor=actor, action="keyring.rewrapped", extra={"kek_id": current.current_id, **counts})
    return counts


def _recorded_parse(version: DatasetVersion) -> dict[str, Any] | None:
    """How a version's upload was parsed, as far as the version records it (the upload itself is
    gone): None for a delimited upload whose delimiter was sniffed (`ingest.parse_options`)."""
    if version.source_format == "parquet":
        return {"format": "parquet", "delimiter": None, "quote_char": None}
    if not version.delimiter:
        return None
    return {"format": "csv", "delimiter": version.delimiter, "quote_char": version.quote_char or None}


def dataset_version_digests_backfill(*, actor: Any = None) -> dict[str, int]:
    """Computes the content digests (`ingest.content_digests`) of every ready version ingested before
    they were computed at ingestion: decrypts its stored table in memory, as a worker does (run where
    the keyring is, like `keyring_rotate`). Each version is its own audited transaction, so a run
    stopped midway keeps what it did and a second run does the rest. A stored file that fails
    authentication marks its version corrupt."""
    counts = {"computed": 0, "corrupt": 0}
    pending = DatasetVersion.objects.filter(status=VersionStatus.READY, content_digests__isnull=True)
    for pk in pending.order_by("pk").values_list("pk", flat=True):
        version = DatasetVersion.objects.select_related("dataset__organisation").get(pk=pk)
        ids = {
            "organisation_id": version.dataset.organisation_id,
            "dataset_id": version.dataset_id,
            "number": version.number,
        }
        try:
            table = storage.read_table(version.data_path, storage.data_context(**ids))
        except CryptoError as exc:
            if isinstance(exc, KeyringError):
                raise  # the keyring is misconfigured: not the file's fault
            dataset_version_mark_corrupt(version=version)
            counts["corrupt"] += 1
            continue
        digests = content_digests(
            table, DatasetSchema.from_dict(version.schema), parse=_recorded_parse(version)
        )
        del table
        with transaction.atomic():
            version = _locked_version(pk)
            if version.status != VersionStatus.READY or version.content_digests is not None:
                continue
            version.content_digests = digests
            version.save(update_fields=["content_digests"])
            audit_record(
                actor=actor,
                action="dataset_version.digests_computed",
                organisation=version.dataset.organisation,
                target=version,
                extra={"number": version.number, "pairs": len(digests["pairs"])},
            )
            counts["computed"] += 1
    return counts


# --- Catalogue listing and access requests ---------------------------------------------------------


def _clean_text(value: Any, *, field: str, max_length: int, required: bool) -> str:
    """A person's free text (a reason, a note): lines allowed, otherwise `clean_name`'s rules (no
    control, invisible or bidirectional characters), at most `max_length` characters."""
    if not isinstance(value, str):
        raise ValidationFailed(
            f"{field} must be text.", code="invalid_text", fields={field: ["Must be text."]}
        )
    text = value.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        if required:
            raise ValidationFailed(
                f"{field} is required.", code=f"{field}_required", fields={field: ["Required."]}
            )
        return ""
    if len(text) > max_length:
        message = f"At most {max_length} characters."
        raise ValidationFailed(f"{field}: {message}", code="text_too_long", fields={field: [message]})
    # clean_name checks every character; line breaks and tabs are the ones free text may add.
    clean_name(text.replace("\n", " ").replace("\t", " "), field=field, max_length=max_length)
    return text


@transaction.atomic
def dataset_listing_set(*, actor: Any, dataset: Dataset, listed: bool) -> Dataset:
    """Lists a dataset in the consortium's catalogue (or takes it out). The owner organisation's
    admins and stewards only (`dataset_require_owner`); only a dataset with a confirmed schema can be
    listed (`schema_not_confirmed`; the catalogue shows that schema, never a proposal read from the
    data). Unlisting leaves grants and pending requests as they are. Setting what is already set
    changes nothing and records nothing."""
    dataset_require_owner(actor=actor, dataset=dataset)
    if not isinstance(listed, bool):
        raise ValidationFailed(
            "listed must be true or false.", code="invalid_listed", fields={"listed": ["Must be a boolean."]}
        )
    audit_lock(dataset.organisation_id)  # first: the lock order of every write (see audit_lock)
    dataset = (
        Dataset.objects.select_for_update(no_key=True, of=("self",))
        .select_related("organisation")
        .get(pk=dataset.pk)
    )
    if listed and not dataset.schema_confirmed:
        raise Conflict(
            "Only a dataset with a confirmed schema can be listed in the catalogue; confirm its schema first.",
            code="schema_not_confirmed",
        )
    if dataset.listed == listed:
        return dataset
    dataset.listed = listed
    dataset.save(update_fields=["listed"])
    audit_record(
        actor=actor,
        action="dataset.listed" if listed else "dataset.unlisted",
        organisation=dataset.organisation,
        target=dataset,
        extra={"slug": dataset.slug},
    )
    return dataset


def _requester_membership(actor: Any):
    """The membership an access request is made (or withdrawn) under: an approved organisation's,
    with the query capability (every role has it). Operators act inside no organisation."""
    if getattr(actor, "is_operator", False):
        raise PermissionDenied(
            "Operators do not act inside member organisations.", code="operator_not_member"
        )
    membership = membership_active(user=actor)
    if membership is None:
        raise NotFound("You are not a member of an approved organisation.", code="no_organisation")
    require_capability(actor=actor, organisation=membership.organisation, capability=RUN_QUERIES)
    return membership


@transaction.atomic
def access_request_create(*, actor: Any, dataset: Dataset, purpose: str, reason: str) -> AccessRequest:
    """Asks a listed dataset's owner for a grant (`purpose`: query or training), with a reason. Refused:
    one's own dataset (`own_dataset`), a dataset not listed (`not_listed`), access the organisation
    already holds (`already_granted`), and a second pending request for the same dataset and purpose
    (`duplicate_request`; the database holds it to one as well). Callers find `dataset` through
    `catalogue_dataset_get`."""
    membership = _requester_membership(actor)
    if purpose not in GrantPurpose.values:
        raise ValidationFailed(
            f"purpose must be one of {', '.join(GrantPurpose.values)}.",
            code="invalid_purpose",
            fields={"purpose": [f"Use one of {', '.join(GrantPurpose.values)}."]},
        )
    reason = _clean_text(reason, field="reason", max_length=ACCESS_REQUEST_REASON_MAX, required=True)
    if dataset.organisation_id == membership.organisation_id:
        raise ValidationFailed(
            "Your organisation owns this dataset: it needs no access request.", code="own_dataset"
        )
    audit_lock(membership.organisation_id)  # first: the lock order of every write (see audit_lock)
    dataset = (
        Dataset.objects.select_for_update(no_key=True, of=("self",))
        .select_related("organisation")
        .get(pk=dataset.pk)
    )
    if not dataset.listed:
        raise Conflict("This dataset is not offered in the catalogue.", code="not_listed")
    if DatasetGrant.objects.filter(
        dataset=dataset, organisation_id=membership.organisation_id, purpose=purpose, revoked_at__isnull=True
    ).exists():
        raise Conflict("Your organisation already has this access.", code="already_granted")
    duplicate = Conflict(
        "Your organisation already has a pending request for this dataset and purpose.",
        code="duplicate_request",
    )
    if AccessRequest.objects.filter(
        dataset=dataset,
        organisation_id=membership.organisation_id,
        purpose=purpose,
        status=AccessRequestStatus.PENDING,
    ).exists():
        raise duplicate
    try:
        with transaction.atomic():
            access_request = AccessRequest.objects.create(
                dataset=dataset,
                organisation=membership.organisation,
                requested_by=actor,
                purpose=purpose,
                reason=reason,
            )
    except IntegrityError:  # one_pending_access_request: a concurrent twin committed first
        raise duplicate from None
    audit_record(
        actor=actor,
        action="access_request.created",
        organisation=membership.organisation,
        target=access_request,
        extra={"dataset": str(dataset), "purpose": purpose},
    )
    return access_request


ACCESS_DECISIONS = ("approve", "decline")


@transaction.atomic
def access_request_decide(
    *, actor: Any, access_request: AccessRequest, decision: str, note: str = ""
) -> AccessRequest:
    """The dataset owner's admins and stewards (the rule of `dataset_grant_create`) approve a pending
    request, which makes the grant through `dataset_grant_create` in this same transaction, or decline
    it; either with an optional note the requester reads. A decided request is `access_request_decided`."""
    if decision not in ACCESS_DECISIONS:
        raise ValidationFailed(
            "decision must be approve or decline.",
            code="invalid_decision",
            fields={"decision": ["Use approve or decline."]},
        )
    membership = membership_active(user=actor)
    dataset = access_request.dataset
    if membership is not None and membership.organisation_id == access_request.organisation_id:
        raise PermissionDenied(
            "Only the dataset's owner organisation decides access requests.", code="not_owner"
        )
    dataset_require_owner(actor=actor, dataset=dataset)
    note = _clean_text(note, field="note", max_length=ACCESS_REQUEST_NOTE_MAX, required=False)
    audit_lock(dataset.organisation_id)  # first: the lock order of every write (see audit_lock)
    access_request = (
        AccessRequest.objects.select_for_update(no_key=True, of=("self",))
        .select_related("dataset__organisation", "organisation")
        .get(pk=access_request.pk)
    )
    if access_request.status != AccessRequestStatus.PENDING:
        raise Conflict(f"This request is already {access_request.status}.", code="access_request_decided")
    grant = None
    if decision == "approve":
        # Granting decides who may get a grant (one rule): its refusals, in this request's words.
        try:
            grant = dataset_grant_create(
                actor=actor,
                dataset=access_request.dataset,
                organisation=access_request.organisation,
                purpose=access_request.purpose,
                answering=access_request.pk,
            )
        except NotFound:
            raise Conflict(
                "The requesting organisation is no longer approved; decline the request.",
                code="requester_not_approved",
            ) from None
        except Conflict as exc:
            if exc.code != "duplicate_grant":
                raise
            raise Conflict(
                "The requesting organisation already has this access; decline the request.",
                code="already_granted",
            ) from None
    now = timezone.now()
    access_request.status = AccessRequestStatus.APPROVED if grant else AccessRequestStatus.DECLINED
    access_request.decided_by = actor
    access_request.decided_at = now
    access_request.decision_note = note
    access_request.grant = grant
    access_request.updated_at = now
    access_request.save(
        update_fields=["status", "decided_by", "decided_at", "decision_note", "grant", "updated_at"]
    )
    audit_record(
        actor=actor,
        action=f"access_request.{access_request.status}",
        organisation=access_request.dataset.organisation,
        target=access_request,
        extra={
            "dataset": access_request.dataset.slug,
            "requester": access_request.organisation.slug,
            "purpose": access_request.purpose,
            "grant": grant.pk if grant else None,
        },
    )
    return access_request


@transaction.atomic
def access_request_withdraw(*, actor: Any, access_request: AccessRequest) -> AccessRequest:
    """The requesting organisation's members take back a pending request. The dataset's owner is told
    no (`not_requester`); anyone else that it does not exist."""
    if getattr(actor, "is_operator", False):
        raise PermissionDenied(
            "Only the requesting organisation withdraws its request.", code="not_requester"
        )
    membership = membership_active(user=actor)
    if membership is None or membership.organisation_id != access_request.organisation_id:
        if membership is not None and membership.organisation_id == access_request.dataset.organisation_id:
            raise PermissionDenied(
                "Only the requesting organisation withdraws its request.", code="not_requester"
            )
        raise NotFound("Access request not found.")
    _requester_membership(actor)
    audit_lock(access_request.organisation_id)  # first: the lock order of every write (see audit_lock)
    access_request = (
        AccessRequest.objects.select_for_update(no_key=True, of=("self",))
        .select_related("dataset__organisation", "organisation")
        .get(pk=access_request.pk)
    )
    if access_request.status != AccessRequestStatus.PENDING:
        raise Conflict(f"This request is already {access_request.status}.", code="access_request_decided")
    access_request.status = AccessRequestStatus.WITHDRAWN
    access_request.updated_at = timezone.now()
    access_request.save(update_fields=["status", "updated_at"])
    audit_record(
        actor=actor,
        action="access_request.withdrawn",
        organisation=access_request.organisation,
        target=access_request,
        extra={"dataset": str(access_request.dataset), "purpose": access_request.purpose},
    )
    return access_request
