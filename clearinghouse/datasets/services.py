"""Writes for datasets: registration, schemas, uploads, ingestion, grants and data-use agreements."""

from __future__ import annotations

import logging
from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from clearinghouse.audit.services import audit_record
from clearinghouse.core.errors import Conflict, NotFound, ValidationFailed
from clearinghouse.core.metrics import INGESTION_BYTES, count_on_commit
from clearinghouse.core.text import clean_name, clean_slug
from clearinghouse.crypto.errors import CryptoError, KeyringError
from clearinghouse.organisations.models import Organisation, OrganisationStatus
from clearinghouse.organisations.roles import MANAGE_DATASETS
from clearinghouse.organisations.selectors import membership_active, require_capability

from . import storage
from .ingest import REPAIRS, IngestError, check, infer_schema, read_raw
from .models import (
    AgreementAcceptance,
    Dataset,
    DatasetGrant,
    DatasetVersion,
    DataUseAgreement,
    GrantPurpose,
    VersionStatus,
)
from .schema import DatasetSchema, SchemaError
from .selectors import agreement_current, dataset_require_owner
from .uploads import EncryptedUpload

logger = logging.getLogger(__name__)
FORMATS = ("csv", "parquet")


def _schema(value: Any) -> DatasetSchema:
    try:
        return DatasetSchema.parse(value) if isinstance(value, str) else DatasetSchema.from_dict(value)
    except SchemaError as exc:
        raise ValidationFailed(f"schema: {exc.message}", code=exc.code, fields={"schema": [exc.message]}) from None


@transaction.atomic
def dataset_register(*, actor: Any, organisation: Organisation, name: str, slug: str, description: str = "",
                     schema: dict | str | None = None) -> Dataset:
    require_capability(actor=actor, organisation=organisation, capability=MANAGE_DATASETS)
    name = clean_name(name, field="name", max_length=120)
    slug = clean_slug(slug)
    description = clean_name(description, field="description", max_length=5000, min_length=0) if description else ""
    parsed = _schema(schema) if schema is not None else None
    if Dataset.objects.filter(organisation=organisation, slug=slug).exists():
        raise Conflict("Your organisation already has a dataset with this slug.", code="duplicate_slug")
    dataset = Dataset.objects.create(organisation=organisation, name=name, slug=slug, description=description,
                                     schema=parsed.to_dict() if parsed else None, schema_confirmed=parsed is not None,
                                     created_by=actor)
    audit_record(actor=actor, action="dataset.registered", organisation=organisation, target=dataset,
                 extra={"slug": slug, "schema_declared": parsed is not None})
    return dataset


@transaction.atomic
def dataset_schema_set(*, actor: Any, dataset: Dataset, schema: dict | str) -> Dataset:
    """Declares or confirms the schema. Later versions are checked against it; earlier versions
    keep the copy they were checked against."""
    dataset_require_owner(actor=actor, dataset=dataset)
    parsed = _schema(schema)
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    dataset.schema = parsed.to_dict()
    dataset.schema_confirmed = True
    dataset.save(update_fields=["schema", "schema_confirmed"])
    audit_record(actor=actor, action="dataset.schema_confirmed", organisation=dataset.organisation, target=dataset,
                 extra={"columns": parsed.names})
    return dataset


@transaction.atomic
def dataset_version_create(*, actor: Any, dataset: Dataset, upload: EncryptedUpload, fmt: str = "",
                           delimiter: str = "", quote_char: str = '"', has_header: bool = True,
                           repair: str = "none") -> DatasetVersion:
    """Records an uploaded (already encrypted) file as a new pending version and queues its ingestion."""
    try:
        dataset_require_owner(actor=actor, dataset=dataset)
        fmt = fmt or ("parquet" if upload.name.lower().endswith(".parquet") else "csv")
        if fmt not in FORMATS:
            raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}.", code="invalid_format")
        if delimiter and len(delimiter) != 1:
            raise ValidationFailed("delimiter must be one character (\\t for tab).", code="invalid_delimiter")
        if quote_char not in {'"', "'", ""}:
            raise ValidationFailed("quote must be a double quote, a single quote or none.", code="invalid_quote")
        if not has_header and not dataset.schema_confirmed:
            raise ValidationFailed("A file without a header row needs a confirmed schema to name its columns.",
                                   code="header_required")
        if repair not in REPAIRS:
            raise ValidationFailed(f"repair must be one of {', '.join(REPAIRS)}.", code="invalid_repair")
        if upload.size == 0:
            raise ValidationFailed("The file is empty.", code="empty_file")
    except Exception:
        upload.discard()
        raise
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    last = dataset.versions.order_by("-number").values_list("number", flat=True).first() or 0
    version = DatasetVersion.objects.create(
        dataset=dataset, number=last + 1, source_format=fmt, source_name=upload.name[:255], source_bytes=upload.size,
        delimiter=delimiter, quote_char=quote_char, has_header=has_header, repair=repair, schema=dataset.schema or {}, staging_path=upload.staging_name,
        kek_id=upload.kek_id, created_by=actor,
    )
    audit_record(actor=actor, action="dataset_version.uploaded", organisation=dataset.organisation, target=version,
                 extra={"number": version.number, "bytes": upload.size, "format": fmt})
    from .tasks import dataset_version_ingest_task

    transaction.on_commit(lambda: dataset_version_ingest_task.delay(version.pk))
    return version


def dataset_version_import(*, actor: Any, dataset: Dataset, data: bytes, name: str, fmt: str = "",
                           delimiter: str = "", quote_char: str = '"', repair: str = "none") -> DatasetVersion:
    """A server-side import (demo, bulk loads): the bytes are encrypted into a staging file exactly as
    an HTTP upload would be (to the staging public key), then recorded as a new version (its
    ingestion queued like any other)."""
    from .uploads import new_staging_file

    staging, target, encryptor = new_staging_file()
    with target:
        encryptor.write(data)
        info = encryptor.finish()
    upload = EncryptedUpload(staging_name=staging, name=name, content_type="application/octet-stream",
                             size=len(data), kek_id=info.kek_id)
    return dataset_version_create(actor=actor, dataset=dataset, upload=upload, fmt=fmt, delimiter=delimiter,
                                  quote_char=quote_char, repair=repair)


@transaction.atomic
def dataset_version_retry(*, actor: Any, version: DatasetVersion, repair: str | None = None) -> DatasetVersion:
    """Runs ingestion again (after the schema was confirmed, or with a repair chosen)."""
    dataset_require_owner(actor=actor, dataset=version.dataset)
    version = DatasetVersion.objects.select_for_update().get(pk=version.pk)
    if version.status not in {VersionStatus.FAILED, VersionStatus.PENDING}:
        raise Conflict(f"Only failed versions can be retried (this one is {version.status}).", code="not_retryable")
    if not version.staging_path:
        raise Conflict("The upload of this version is gone; upload the file again.", code="upload_gone")
    if repair is not None:
        if repair not in REPAIRS:
            raise ValidationFailed(f"repair must be one of {', '.join(REPAIRS)}.", code="invalid_repair")
        version.repair = repair
    version.schema = version.dataset.schema or {}
    version.status = VersionStatus.PENDING
    version.error_code = version.error_message = ""
    version.save(update_fields=["repair", "schema", "status", "error_code", "error_message"])
    audit_record(actor=actor, action="dataset_version.retried", organisation=version.dataset.organisation,
                 target=version, extra={"repair": version.repair})
    from .tasks import dataset_version_ingest_task

    transaction.on_commit(lambda: dataset_version_ingest_task.delay(version.pk))
    return version


def dataset_version_ingest(*, version_id: int) -> DatasetVersion:
    """Worker side: decrypt the staged upload in memory, check it against the schema, store the
    normalised table encrypted. Safe to run again after a crash at any point."""
    with transaction.atomic():
        version = DatasetVersion.objects.select_for_update().select_related("dataset__organisation").get(pk=version_id)
        if version.status not in {VersionStatus.PENDING, VersionStatus.VALIDATING}:
            return version  # already done (a duplicate delivery of the task)
        version.status = VersionStatus.VALIDATING
        version.save(update_fields=["status"])
    dataset = version.dataset
    try:
        plaintext = storage.read_staging(version.staging_path)
    except KeyringError:
        raise  # the worker's keyring is misconfigured: not the upload's fault, so not "corrupt"
    except CryptoError:
        return _version_corrupt(version, "The uploaded file failed authentication: it was altered in storage.")
    except FileNotFoundError:
        return _version_failed(version, "upload_gone", "The uploaded file is gone; upload it again.")
    try:
        schema = DatasetSchema.from_dict(version.schema) if dataset.schema_confirmed and version.schema else None
        raw = read_raw(plaintext, fmt=version.source_format, delimiter=version.delimiter or None,
                       column_names=None if version.has_header else schema.names,
                       quote_char=version.quote_char or None, schema=schema)
        del plaintext
        if schema is None:
            return _schema_proposed(version, infer_schema(raw))
        result = check(raw, schema, repair=version.repair)
    except IngestError as exc:
        return _version_failed(version, exc.code, exc.message, report=exc.report)
    name = storage.data_file_name(organisation_id=dataset.organisation_id, dataset_id=dataset.pk, number=version.number)
    context = storage.data_context(organisation_id=dataset.organisation_id, dataset_id=dataset.pk,
                                   number=version.number)
    info = storage.write_table(name, context, result.table)
    with transaction.atomic():
        version = DatasetVersion.objects.select_for_update().get(pk=version.pk)
        staging = version.staging_path
        version.status = VersionStatus.READY
        version.data_path = name
        version.data_bytes = info.ciphertext_size
        version.kek_id = info.kek_id
        version.row_count = result.table.height
        version.quality_report = result.report
        version.staging_path = ""
        version.finished_at = timezone.now()
        version.save()
        audit_record(actor=None, action="dataset_version.ready", organisation=dataset.organisation, target=version,
                     extra={"rows": version.row_count, "violations": result.report["violations"],
                            "repair": version.repair})
        count_on_commit(INGESTION_BYTES.labels(outcome="ready"), version.source_bytes)
        transaction.on_commit(lambda: default_storage.delete(staging))
    return version


def _version_failed(version: DatasetVersion, code: str, message: str, *, report: dict | None = None) -> DatasetVersion:
    with transaction.atomic():
        version = DatasetVersion.objects.select_for_update().get(pk=version.pk)
        version.status = VersionStatus.FAILED
        version.error_code = code
        version.error_message = message
        version.quality_report = report
        version.finished_at = timezone.now()
        version.save()
        audit_record(actor=None, action="dataset_version.failed", organisation=version.dataset.organisation,
                     target=version, extra={"code": code})
        count_on_commit(INGESTION_BYTES.labels(outcome="failed"), version.source_bytes)
    return version


def _schema_proposed(version: DatasetVersion, proposal: dict) -> DatasetVersion:
    with transaction.atomic():
        dataset = Dataset.objects.select_for_update().get(pk=version.dataset_id)
        if not dataset.schema_confirmed:
            dataset.schema = proposal["schema"]
            dataset.save(update_fields=["schema"])
    return _version_failed(version, "schema_unconfirmed",
                           "A schema was inferred from this upload. " + proposal["warning"] +
                           " Then retry this version.")


def _version_corrupt(version: DatasetVersion, message: str) -> DatasetVersion:
    logger.error("Dataset version %s failed authentication on decryption", version.pk)
    with transaction.atomic():
        version = DatasetVersion.objects.select_for_update().get(pk=version.pk)
        version.status = VersionStatus.CORRUPT
        version.error_code = "integrity_error"
        version.error_message = message
        version.finished_at = timezone.now()
        version.save()
        audit_record(actor=None, action="dataset_version.corrupt", organisation=version.dataset.organisation,
                     target=version, extra={"number": version.number})
    return version


def dataset_version_mark_corrupt(*, version: DatasetVersion) -> DatasetVersion:
    """Called by any worker whose decryption of a ready version fails authentication."""
    return _version_corrupt(version, "The stored data failed authentication: it was altered in storage.")


@transaction.atomic
def dataset_grant_create(*, actor: Any, dataset: Dataset, organisation: Organisation, purpose: str) -> DatasetGrant:
    dataset_require_owner(actor=actor, dataset=dataset)
    if purpose not in GrantPurpose.values:
        raise ValidationFailed(f"purpose must be one of {', '.join(GrantPurpose.values)}.", code="invalid_purpose")
    if organisation.pk == dataset.organisation_id:
        raise ValidationFailed("The owner organisation needs no grant.", code="owner_grant")
    if organisation.status != OrganisationStatus.APPROVED:
        raise NotFound("Organisation not found.")
    if DatasetGrant.objects.filter(dataset=dataset, organisation=organisation, purpose=purpose,
                                   revoked_at__isnull=True).exists():
        raise Conflict("This organisation already has this grant.", code="duplicate_grant")
    grant = DatasetGrant.objects.create(dataset=dataset, organisation=organisation, purpose=purpose, granted_by=actor)
    audit_record(actor=actor, action="dataset_grant.created", organisation=dataset.organisation, target=grant,
                 extra={"grantee": organisation.slug, "purpose": purpose, "dataset": dataset.slug})
    return grant


@transaction.atomic
def dataset_grant_revoke(*, actor: Any, grant: DatasetGrant) -> DatasetGrant:
    dataset_require_owner(actor=actor, dataset=grant.dataset)
    grant = DatasetGrant.objects.select_for_update().get(pk=grant.pk)
    if grant.revoked_at is not None:
        raise Conflict("This grant is already revoked.", code="grant_revoked")
    grant.revoked_at = timezone.now()
    grant.save(update_fields=["revoked_at"])
    audit_record(actor=actor, action="dataset_grant.revoked", organisation=grant.dataset.organisation, target=grant,
                 extra={"grantee": grant.organisation.slug, "purpose": grant.purpose})
    return grant


@transaction.atomic
def agreement_publish(*, actor: Any, dataset: Dataset, text: str) -> DataUseAgreement:
    dataset_require_owner(actor=actor, dataset=dataset)
    text = clean_name(text, field="text", max_length=50_000) if text else ""
    if not text:
        raise ValidationFailed("The agreement text is required.", code="invalid_agreement")
    Dataset.objects.select_for_update().get(pk=dataset.pk)
    current = agreement_current(dataset=dataset)
    agreement = DataUseAgreement.objects.create(dataset=dataset, version=(current.version + 1) if current else 1,
                                                text=text, created_by=actor)
    audit_record(actor=actor, action="agreement.published", organisation=dataset.organisation, target=agreement,
                 extra={"dataset": dataset.slug, "version": agreement.version})
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
        raise Conflict(f"Version {current.version} is current; read and accept that one.", code="agreement_outdated")
    acceptance, created = AgreementAcceptance.objects.get_or_create(agreement=current, user=actor)
    if created:
        audit_record(actor=actor, action="agreement.accepted", organisation=membership.organisation, target=acceptance,
                     extra={"dataset": f"{dataset.organisation.slug}/{dataset.slug}", "version": current.version})
    return acceptance


def dataset_files_rewrap(*, actor: Any = None) -> dict[str, int]:
    """Re-wraps the data key of every stored version file under the keyring's current KEK; staged
    uploads (wrapped to a staging key) move under the current KEK too.

    Only headers change (segments are copied byte for byte); each file is replaced atomically, so a
    crash leaves either the old header or the new one, both readable while the old key is kept."""
    from clearinghouse.core.keys import keyring
    from clearinghouse.crypto.envelope import rewrap_stream

    current = keyring()
    counts = {"rewrapped": 0, "already_current": 0}
    versions = DatasetVersion.objects.exclude(kek_id=current.current_id).exclude(data_path="", staging_path="")
    for version in versions.iterator():
        for name in filter(None, [version.data_path, version.staging_path]):
            temporary = f"{name}.rewrap"
            with default_storage.open(name, "rb") as src, storage.open_for_write(temporary) as dst:
                rewrap_stream(src, dst, keyring=current)
            storage.replace(temporary, name)
            counts["rewrapped"] += 1
        DatasetVersion.objects.filter(pk=version.pk).update(kek_id=current.current_id)
    counts["already_current"] = DatasetVersion.objects.filter(kek_id=current.current_id).count()
    with transaction.atomic():
        audit_record(actor=actor, action="keyring.rewrapped", extra={"kek_id": current.current_id, **counts})
    return counts
