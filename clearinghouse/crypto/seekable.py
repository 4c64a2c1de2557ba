"""Random access to an encrypted file: a seekable, read-only file object over its plaintext.

A reader (pyarrow's Parquet reader, say) that needs only some byte ranges of a large file should not
have to decrypt all of it. STREAM segments are sealed independently (the nonce holds the segment's
index and whether it is the final one, see `envelope`), so any segment can be authenticated and
decrypted on its own. `SegmentReader` does exactly that, for the segments a read touches, keeping a
few decrypted segments in a small LRU cache.

Strictness is that of `decrypt_stream`, segment by segment:

* On open: the header is parsed and authenticated (header MAC, with the data key unwrapped from the
  keyring), the segment count and plaintext size follow from the file's length, and the *final*
  segment is authenticated as final. So a file truncated at a segment boundary (its new last segment
  was sealed as non-final), one with a segment appended (the real final segment is no longer last), a
  file cut mid-segment and a wrong context (every segment's AD binds it) all fail on open with
  `IntegrityError`, even if the caller never reads the tail.
* On read: each segment read is authenticated under its own index, so a modified, swapped or
  reordered segment fails with `IntegrityError` when a read touches it. Segments a caller never reads
  are never checked: a caller that needs the whole file authenticated reads all of it (or uses
  `decrypt_stream`).

The source must be seekable and must not change while open (a short read raises `IntegrityError`).
The reader does not close `src`; closing the reader drops its decrypted segments.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any, BinaryIO

from ._aead import TAG_SIZE, new_segment_cipher
from .context import Context, canonical_context
from .envelope import _MAX_SEGMENTS, _fill, _nonce, _open_header, _segment_ad
from .errors import CryptoError, IntegrityError
from .header import _read_parsed
from .keyring import Keyring

__all__ = ["SegmentReader"]

DEFAULT_CACHE_SEGMENTS = 4


class SizedReader(io.RawIOBase):
    """A read-only, seekable raw file of a known size (`_size`) read from a position (`_pos`): the
    `io.RawIOBase` plumbing that `SegmentReader` and the object store's ranged reader
    (`clearinghouse.datasets.ranged.S3RangeFile`) share; each gives its own `readinto`."""

    _size: int
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed {type(self).__name__}")


class SegmentReader(SizedReader):
    """`SegmentReader(src, keyring=..., context=...)`: the plaintext of the encrypted file `src` as a
    seekable read-only binary file (`read`, `readinto`, `seek`, `tell`, `size`).

    Raises `UnknownKeyError` (the file's key is not in `keyring`), `FormatError` (not an encrypted
    file) or `IntegrityError` (see the module docstring) on open; `IntegrityError` from a read that
    touches a damaged segment. Memory: at most `cache_segments` decrypted segments (1 MiB each by
    default) plus one sealed segment buffer.
    """

    def __init__(
        self,
        src: BinaryIO,
        *,
        keyring: Keyring,
        context: Context,
        cache_segments: int = DEFAULT_CACHE_SEGMENTS,
    ) -> None:
        super().__init__()
        if cache_segments < 1:
            raise ValueError("cache_segments must be at least 1")
        if not src.seekable():
            raise CryptoError("SegmentReader needs a seekable source")
        ctx = canonical_context(context)
        src.seek(0)
        header, header_bytes = _read_parsed(src)
        _, payload_key, _ = _open_header(header, keyring)
        self._src = src
        self._header = header
        self._ad = _segment_ad(header, ctx)
        self._cipher = new_segment_cipher(payload_key)
        self._segment_size = header.segment_size
        self._sealed_size = header.segment_size + TAG_SIZE
        self._data_offset = len(header_bytes)
        sealed_total = src.seek(0, io.SEEK_END) - self._data_offset
        count = max(1, -(-sealed_total // self._sealed_size))
        last = sealed_total - (count - 1) * self._sealed_size
        if last < TAG_SIZE or (count > 1 and last == TAG_SIZE):
            # As `decrypt_stream`: too short for a tag, or an empty non-first final segment (never
            # written): the file was truncated.
            raise IntegrityError(
                f"encrypted file is truncated (segment {count - 1} is incomplete or missing)"
            )
        if count > _MAX_SEGMENTS:
            raise IntegrityError("encrypted file has more segments than the format allows")
        self._count = count
        self._last_sealed = last
        self._size = sealed_total - count * TAG_SIZE
        self._sealed = memoryview(bytearray(self._sealed_size))
        self._cache: OrderedDict[int, memoryview] = OrderedDict()
        self._cache_segments = cache_segments
        self._pos = 0
        self._segment(count - 1)  # authenticates the final segment as final: catches truncation/extension

    # -- properties ------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Plaintext size in bytes."""
        return self._size

    @property
    def segment_count(self) -> int:
        return self._count

    # -- segments ---------------------------------------------------------------------------------------

    def _segment(self, index: int) -> memoryview:
        """The authenticated plaintext of segment `index` (from the cache, else read and decrypted)."""
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        final = index == self._count - 1
        length = self._last_sealed if final else self._sealed_size
        self._src.seek(self._data_offset + index * self._sealed_size)
        view = self._sealed[:length]
        if _fill(self._src, view) != length:
            raise IntegrityError(
                f"encrypted file is truncated (segment {index} is incomplete): it changed while open"
            )
        plain = bytearray(length - TAG_SIZE)
        if not self._cipher.open_into(
            _nonce(self._header.nonce_prefix, index, final), self._ad, view, memoryview(plain)
        ):
            raise IntegrityError(
                f"segment {index} failed authentication: wrong context (e.g. another dataset), or the "
                "file was modified, truncated, reordered or extended"
            )
        data = memoryview(plain).toreadonly()
        self._cache[index] = data
        if len(self._cache) > self._cache_segments:
            self._cache.popitem(last=False)
        return data

    # -- io.RawIOBase ---------------------------------------------------------------------------------

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        out = memoryview(buffer).cast("B")
        want = min(len(out), max(0, self._size - self._pos))
        done = 0
        while done < want:
            index, offset = divmod(self._pos, self._segment_size)
            segment = self._segment(index)
            take = min(want - done, len(segment) - offset)
            out[done : done + take] = segment[offset : offset + take]
            done += take
            self._pos += take
        return done

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        want = min(size, max(0, self._size - self._pos))
        if want == 0:
            return b""
        index, offset = divmod(self._pos, self._segment_size)
        segment = self._segment(index)
        if offset + want <= len(segment):  # within one segment: one copy
            self._pos += want
            return bytes(segment[offset : offset + want])
        out = bytearray(want)
        got = self.readinto(out)
        return bytes(out[:got]) if got < want else bytes(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        cache = getattr(self, "_cache", None)  # absent when __init__ failed
        if cache is not None:
            cache.clear()
        super().close()
