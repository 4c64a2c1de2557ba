"""Uploads are encrypted as they stream in, so no plaintext copy ever lands on a disk.

Django's default handlers buffer large uploads to a plaintext temporary file; the staging handler
instead feeds each chunk to a streaming encryptor writing to a staging file in the object store, under
a context naming only that staging file. The file's data key is wrapped to the staging *public* key:
the web process holds nothing that can decrypt an upload (it never loads the keyring). The
ingestion worker unwraps it with the keyring's staging private key and decrypts it in memory.

Who may write a staging file:

* Globally (settings.FILE_UPLOAD_HANDLERS) `DiscardingUploadHandler`: the file parts of any multipart
  request are skipped, never written to memory or disk. Middleware (CSRF reads the form) and views
  that parse a multipart body therefore cost no storage, whoever sends it.
* `receiving_upload`, used only by the dataset upload views once the user is authenticated and
  allowed to upload to that dataset (and the organisation is under its staging quota), installs
  `StagingUploadHandler` for that one request. It stages one file part, named `file`, and only if
  `admit` agrees when that part starts (the portal checks CSRF there, from the fields before the file);
  any other file part is skipped and makes the upload fail. When the request ends, every file it
  staged that no version records is deleted: refused uploads, errors, aborted transfers, rolled-back
  transactions. (A transaction rolled back after the request ended, or a killed process, leaves a
  file no version records: `services.dataset_staging_sweep` deletes those after some hours.)
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopUpload
from django.http import HttpRequest, HttpResponse, QueryDict, UnreadablePostError
from django.http.multipartparser import MultiPartParser
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.datastructures import MultiValueDict

from clearinghouse.core.errors import ValidationFailed
from clearinghouse.core.keys import staging_public_key
from clearinghouse.crypto.envelope import StreamEncryptor

from .models import Dataset, DatasetVersion
from .selectors import dataset_upload_target

STAGING_DIR = "staging"
UPLOAD_FIELD = "file"
TAB_WORDS = frozenset({"\\t", "tab"})  # how a form names the tab delimiter
NO_QUOTE = "none"  # how a form asks for no quote character
logger = logging.getLogger(__name__)


def open_for_write(name: str) -> BinaryIO:
    """Opens `name` in the object store for streaming writes (local storage needs its folders)."""
    try:
        path = default_storage.path(name)
    except NotImplementedError:  # remote stores (S3 and the like) have no local path and no folders
        path = None
    if path is not None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    # A Django `File` proxies the binary file it opened.
    return cast(BinaryIO, default_storage.open(name, "wb"))


def staging_context(staging_name: str) -> dict[str, str]:
    return {"purpose": "upload-staging", "file": staging_name}


def new_staging_file() -> tuple[str, BinaryIO, StreamEncryptor]:
    """(name, open target, encryptor) of a new staging file encrypted to the staging public key."""
    name = f"{STAGING_DIR}/{uuid.uuid4().hex}.enc"
    target = open_for_write(name)
    try:
        return (
            name,
            target,
            StreamEncryptor(target, recipient=staging_public_key(), context=staging_context(name)),
        )
    except BaseException:
        target.close()
        default_storage.delete(name)
        raise


class EncryptedUpload(UploadedFile):
    """What the view receives: where the ciphertext is, how big the plaintext was, and the id of the
    (staging) key its data key is wrapped to."""

    name: str  # both given to the constructor (`UploadedFile` allows None)
    size: int

    def __init__(self, *, staging_name: str, name: str, content_type: str | None, size: int, kek_id: str):
        super().__init__(file=None, name=name, content_type=content_type, size=size)
        self.staging_name = staging_name
        self.kek_id = kek_id

    def discard(self) -> None:
        default_storage.delete(self.staging_name)


class DiscardingUploadHandler(FileUploadHandler):
    """The global upload handler: every file part is skipped (its bytes read off the wire and dropped),
    so no multipart request writes anything anywhere unless a view installed `StagingUploadHandler`."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        raise SkipFile()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        return None

    def file_complete(self, file_size: int) -> None:
        return None


class StagingUploadHandler(FileUploadHandler):
    """Encrypts the request's one `file` part into a staging file (installed by `receiving_upload`).

    `admit(fields)` is asked when that part starts, with the form fields sent before it; it returns why
    the file may not be staged (then the part is skipped), or None. `staged` lists every staging file
    this request created, for `release`."""

    def __init__(self, request: HttpRequest, *, admit: Callable[[QueryDict], str | None] | None = None):
        super().__init__(request)
        self.admit = admit
        self.staged: list[str] = []
        self.refused: list[str] = []
        self.not_admitted: str | None = None
        self.too_large = False
        self.target: BinaryIO | None = None
        self._parser: MultiPartParser | None = None

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        """Runs the parse with a parser this handler can see, so that `new_file` knows the fields that
        came before the file part (e.g. the CSRF token of the portal's form, placed first)."""
        if self._parser is not None:
            return None  # the parse below calls this hook again: let it parse
        self._parser = MultiPartParser(META, input_data, [self], encoding)
        return self._parser.parse()

    def _fields_so_far(self) -> QueryDict:
        # Django keeps the fields parsed so far in `_post`; if that ever changes, `admit` sees none
        # and refuses what it cannot check (fails closed).
        fields = getattr(self._parser, "_post", None)
        return fields if isinstance(fields, QueryDict) else QueryDict()

    def new_file(self, field_name, file_name, *args, **kwargs) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        self.target = None
        reason = None
        if field_name != UPLOAD_FIELD:
            reason = f"unexpected file field {field_name[:40]!r}"
        elif self.staged:
            reason = "a second file"
        elif self.admit is not None:
            self.not_admitted = self.admit(self._fields_so_far())
            if self.not_admitted:
                raise SkipFile()
        if reason:
            self.refused.append(reason)
            raise SkipFile()
        self.size = 0
        self.staging_name, self.target, self.encryptor = new_staging_file()
        self.staged.append(self.staging_name)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.target is None:
            return
        self.size += len(raw_data)
        if self.size > settings.DATASET_UPLOAD_MAX_BYTES:
            self._abort()
            self.too_large = True
            raise StopUpload(connection_reset=False)
        self.encryptor.write(raw_data)

    def file_complete(self, file_size: int) -> EncryptedUpload | None:
        if self.target is None:
            return None
        info = self.encryptor.finish()
        self.target.close()
        self.target = None
        return EncryptedUpload(
            staging_name=self.staging_name,
            name=self.file_name or "upload",
            content_type=self.content_type,
            size=self.size,
            kek_id=info.kek_id,
        )

    def upload_interrupted(self) -> None:
        self._abort()

    def _abort(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            if not target.closed:
                target.close()
            default_storage.delete(self.staging_name)

    def upload(self, files: MultiValueDict) -> EncryptedUpload:
        """The staged upload of a parsed request; refuses requests that sent anything else."""
        if self.too_large:
            raise ValidationFailed("The file is larger than the upload limit.", code="file_too_large")
        if self.not_admitted:
            raise ValidationFailed(
                f"The file was not accepted: {self.not_admitted}.", code="file_not_admitted"
            )
        if self.refused:
            raise ValidationFailed(
                f"Send exactly one file, in the multipart field '{UPLOAD_FIELD}' (refused: "
                f"{'; '.join(self.refused[:3])}).",
                code="unexpected_file_field",
            )
        upload = files.get(UPLOAD_FIELD)
        if not isinstance(upload, EncryptedUpload):
            raise ValidationFailed(
                f"Attach the data file as the multipart field '{UPLOAD_FIELD}'.", code="file_required"
            )
        return upload

    def release(self) -> None:
        """Deletes every file this request staged that no version records (called when the request
        ends, however it ends). Files a version records stay: its ingestion reads them."""
        self._abort()
        if not self.staged:
            return
        try:
            recorded = set(
                DatasetVersion.objects.filter(staging_path__in=self.staged).values_list(
                    "staging_path", flat=True
                )
            )
        except Exception:  # noqa: BLE001 (the database is unusable here: the staging sweeper deletes them later)
            logger.warning("Could not check %d staged upload(s) at the end of a request", len(self.staged))
            return
        for name in self.staged:
            if name not in recorded:
                default_storage.delete(name)


@contextmanager
def receiving_upload(
    request: HttpRequest, *, admit: Callable[[QueryDict], str | None] | None = None
) -> Iterator[StagingUploadHandler]:
    """For the body of an upload view, after authentication and authorization and before anything
    reads the request body: stages the `file` part as it is parsed, and deletes on exit whatever
    the request staged that no version records."""
    handler = StagingUploadHandler(request, admit=admit)
    request.upload_handlers = [handler]
    try:
        yield handler
    finally:
        handler.release()


@contextmanager
def dataset_upload_receiving(
    request: HttpRequest,
    *,
    actor: Any,
    organisation_slug: str,
    dataset_slug: str,
    admit: Callable[[QueryDict], str | None] | None = None,
) -> Iterator[tuple[Dataset, StagingUploadHandler]]:
    """The one way into an upload, for the API's and the portal's upload views, before anything reads
    the request body: who may upload to this dataset and the staging quota
    (`selectors.dataset_upload_target`), a declared body over the limit, then `receiving_upload`.
    Yields (dataset, receipt); the body of the `with` reads the form (so stages the file), and an
    interrupted transfer while it does is `upload_interrupted`."""
    dataset = dataset_upload_target(
        actor=actor, organisation_slug=organisation_slug, dataset_slug=dataset_slug
    )
    if upload_too_large_early(request):
        raise ValidationFailed("The file is larger than the upload limit.", code="file_too_large")
    with receiving_upload(request, admit=admit) as receipt:
        try:
            yield dataset, receipt
        except UnreadablePostError:
            raise ValidationFailed("The upload was interrupted.", code="upload_interrupted") from None


def upload_reader_options(
    *, fmt: str = "", delimiter: str = "", quote: str = '"', has_header: bool = True, repair: str = ""
) -> dict[str, Any]:
    """`dataset_version_create`'s reader options from an upload form's words, the same for the API and
    the portal: `\\t` or `tab` for a tab delimiter, `none` for no quote character, an empty repair
    for `none`. The service checks the values themselves."""
    return {
        "fmt": fmt,
        "delimiter": "\t" if delimiter in TAB_WORDS else delimiter,
        "quote_char": "" if quote == NO_QUOTE else quote,
        "has_header": has_header,
        "repair": repair or "none",
    }


def upload_too_large_early(request: HttpRequest) -> bool:
    """Whether the declared body is larger than any acceptable upload, so that it can be refused
    before a byte of it is read (the file limit plus the form fields' own limit)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    return (
        declared > settings.DATASET_UPLOAD_MAX_BYTES + (settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) + 64 * 1024
    )


class _CsrfProbe(CsrfViewMiddleware):
    def _reject(self, request, reason):  # a verdict, not a response (as DRF's CSRFCheck)
        return reason


def _csrf_protected(request):  # the callback the probe checks: not csrf_exempt
    return None


def _not_called(request: HttpRequest) -> HttpResponse:  # the middleware's `get_response`: only its checks run
    raise AssertionError("the CSRF middleware is used for its checks only")


def csrf_failure_response(request: HttpRequest) -> HttpResponse | None:
    """Django's CSRF check over the whole form (reading it, so parsing the upload): the CSRF failure
    page, or None."""
    return CsrfViewMiddleware(_not_called).process_view(request, _csrf_protected, (), {})


def csrf_refusal(request: HttpRequest, fields: QueryDict | None) -> str | None:
    """Django's CSRF check of `request` as if its form fields were `fields` (those parsed so far; None
    for none, so only the X-CSRFToken header counts). Never reads the request body. The reason for
    refusing, or None."""
    probe = copy.copy(request)
    # `_post` and `_files` are where HttpRequest keeps its parsed form (private: not in the stubs).
    probe._post = fields if fields is not None else QueryDict()  # type: ignore[attr-defined]
    probe._files = MultiValueDict()  # type: ignore[attr-defined]
    check = _CsrfProbe(_not_called)
    check.process_request(probe)
    # `_CsrfProbe._reject` makes the verdict the reason, not a response.
    return cast(str | None, check.process_view(probe, _csrf_protected, (), {}))
