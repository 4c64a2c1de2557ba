"""Reading a stored object by byte range, for readers that need only parts of it.

`SegmentReader` decrypts only the segments a read touches, and pyarrow reads only the column chunks it
is asked for; but django-storages' S3 file object downloads the whole object on first access (into a
`SpooledTemporaryFile`), so on S3 the worker would still fetch and hold all of the ciphertext.
`open_for_read` gives, for an S3 store, a seekable file whose every read is one `GetObject` with a
`Range` header: only the bytes read cross the network, and only a small read buffer is held. Every
other store gets `default_storage.open(name, "rb")` as before (a local file already reads by range).

The bytes read are ciphertext: nothing here decrypts, logs or keeps them beyond the read buffer.

Reads are not pinned to one version of the object (no `If-Match`): an object replaced while open is
read partly old and partly new. Every caller reads through `SegmentReader`, which authenticates each
segment under the data key of the header it read first, so bytes of another file fail with
`IntegrityError` and never decrypt. The one in-place replace, key rotation (`storage.rewrap_file`),
copies the segments byte for byte behind a header of the same layout, so a read that straddles it
still gets the same, valid bytes.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO, cast

from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from django.core.files.storage import default_storage
from s3transfer.constants import ALLOWED_DOWNLOAD_ARGS  # type: ignore[import-untyped]
from storages.backends.s3 import S3Storage  # type: ignore[import-untyped]
from storages.utils import clean_name  # type: ignore[import-untyped]

from clearinghouse.crypto.seekable import SizedReader

__all__ = ["DEFAULT_BUFFER_SIZE", "S3RangeFile", "open_for_read"]

# One read-ahead buffer. A read larger than the buffer (a sealed segment is 1 MiB + a 16-byte tag) goes
# straight to one ranged GET of exactly its bytes; smaller reads (a header, a Parquet footer) fetch
# this much, so small reads near each other share one request.
DEFAULT_BUFFER_SIZE = 1024 * 1024


def open_for_read(name: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> BinaryIO:
    """`name` in the object store, opened for reading: on S3 a buffered `S3RangeFile` (ranged GETs),
    otherwise the storage's own file. Raises FileNotFoundError when there is no such object."""
    if isinstance(default_storage, S3Storage):
        ranged = S3RangeFile.open(default_storage, name)
        if ranged is not None:
            return cast(BinaryIO, io.BufferedReader(ranged, buffer_size=buffer_size))
    # A Django `File` proxies the binary file it opened.
    return cast(BinaryIO, default_storage.open(name, "rb"))


class S3RangeFile(SizedReader):
    """A read-only, seekable raw file over one S3 object: `readinto` issues one ranged `GetObject` for
    the bytes asked (clamped to the object's size, taken from one `HeadObject` on open). Wrap it in an
    `io.BufferedReader` (`open_for_read` does). Retries of failed requests are botocore's (the
    client's retry configuration); a body cut off mid-transfer raises botocore's error."""

    def __init__(self, client: Any, *, bucket: str, key: str, size: int, params: dict[str, Any]) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._key = key
        self._size = size
        self._params = params
        self._pos = 0

    @classmethod
    def open(cls, storage: S3Storage, name: str) -> S3RangeFile | None:
        """The object `name` of `storage` (its `location` prefix applied as the storage does), or None
        when its bytes are not what the storage would return (a gzip-encoded object, which the storage
        decompresses on download)."""
        key = storage._normalize_name(clean_name(name))
        params = {k: v for k, v in storage.get_object_parameters(key).items() if k in ALLOWED_DOWNLOAD_ARGS}
        client = storage.connection.meta.client
        try:
            head = client.head_object(Bucket=storage.bucket_name, Key=key, **params)
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise FileNotFoundError(f"File does not exist: {key}") from None
            raise
        if storage.gzip and head.get("ContentEncoding") == "gzip":
            return None
        return cls(
            client, bucket=storage.bucket_name, key=key, size=int(head["ContentLength"]), params=params
        )

    @property
    def size(self) -> int:
        return self._size

    def readinto(self, buffer: Any) -> int:
        """Fills `buffer` from the current position with one ranged GET; 0 at or past the end."""
        self._check_open()
        out = memoryview(buffer).cast("B")
        want = min(len(out), max(0, self._size - self._pos))
        if want == 0:
            return 0
        first, last = self._pos, self._pos + want - 1
        response = self._client.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}", **self._params
        )
        body = response["Body"]
        try:
            # A store that ignores Range answers 200 with the whole object: its first bytes are not
            # the ones asked for (unless `first` is 0).
            if not str(response.get("ContentRange", "")).startswith(f"bytes {first}-") and first != 0:
                raise OSError(f"the object store ignored the byte range of a read of {self._key}")
            got = 0
            while got < want:
                n = body.readinto(out[got:want])
                if not n:
                    break
                got += n
        finally:
            body.close()
        self._pos += got
        return got

    def close(self) -> None:
        self._client = None
        super().close()
