"""Uploads are encrypted as they stream in, so no plaintext copy ever lands on a disk.

Django's default handlers buffer large uploads to a plaintext temporary file; this handler instead
feeds each chunk to a streaming encryptor writing to a staging file in the object store, under a
context naming only that staging file. The file's data key is wrapped to the staging *public* key:
the web process holds nothing that can decrypt an upload (it never loads the keyring). The
ingestion worker unwraps it with the keyring's staging private key and decrypts it in memory.
"""

from __future__ import annotations

import os
import uuid

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from clearinghouse.core.keys import staging_public_key
from clearinghouse.crypto.envelope import StreamEncryptor

STAGING_DIR = "staging"


def open_for_write(name: str):
    """Opens `name` in the object store for streaming writes (local storage needs its folders)."""
    try:
        path = default_storage.path(name)
    except NotImplementedError:  # remote stores (S3 and the like) have no local path and no folders
        path = None
    if path is not None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return default_storage.open(name, "wb")


def staging_context(staging_name: str) -> dict[str, str]:
    return {"purpose": "upload-staging", "file": staging_name}


def new_staging_file() -> tuple[str, object, StreamEncryptor]:
    """(name, open target, encryptor) of a new staging file encrypted to the staging public key."""
    name = f"{STAGING_DIR}/{uuid.uuid4().hex}.enc"
    target = open_for_write(name)
    try:
        return name, target, StreamEncryptor(target, recipient=staging_public_key(), context=staging_context(name))
    except BaseException:
        target.close()
        default_storage.delete(name)
        raise


class EncryptedUpload(UploadedFile):
    """What the view receives: where the ciphertext is, how big the plaintext was, and the id of the
    (staging) key its data key is wrapped to."""

    def __init__(self, *, staging_name: str, name: str, content_type: str, size: int, kek_id: str):
        super().__init__(file=None, name=name, content_type=content_type, size=size)
        self.staging_name = staging_name
        self.kek_id = kek_id

    def discard(self) -> None:
        default_storage.delete(self.staging_name)


class EncryptingUploadHandler(FileUploadHandler):
    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.size = 0
        self.staging_name, self.target, self.encryptor = new_staging_file()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.size += len(raw_data)
        if self.size > settings.DATASET_UPLOAD_MAX_BYTES:
            self._abort()
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=False)
        self.encryptor.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> EncryptedUpload:
        info = self.encryptor.finish()
        self.target.close()
        return EncryptedUpload(staging_name=self.staging_name, name=self.file_name or "upload",
                               content_type=self.content_type, size=self.size, kek_id=info.kek_id)

    def upload_interrupted(self) -> None:
        self._abort()

    def _abort(self) -> None:
        target = getattr(self, "target", None)
        if target is not None and not target.closed:
            target.close()
            default_storage.delete(self.staging_name)
