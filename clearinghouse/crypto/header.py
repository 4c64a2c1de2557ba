"""Byte layout of the encrypted-file header (format version 2). See `envelope` for what each field is for.

All integers are big-endian::

    offset     size  field
    0          5     magic b"CHENC"
    5          1     format version (2)
    6          4     segment size S: plaintext bytes per segment (16 .. 64 MiB)
    10         32    salt (random; HKDF salt for the per-file keys)
    42         7     nonce prefix (random; STREAM nonce = prefix || uint32 counter || last-flag byte)
    49         1     wrap kind: 1 = AES key wrap under a KEK, 2 = X25519 to a staging public key
    50         1     key id length n (1..64)
    51         n     key id (ASCII, e.g. "kek-2026-11-25-ab12" or "stg-2026-11-25-cd34")
    51+n       2     wrapped data key length m (40 for kind 1, 72 for kind 2; see `wrapping`)
    53+n       m     the wrapped data key
    53+n+m     32    header MAC: HMAC-SHA256 over every header byte before it

Format version 1 (still read, and re-wrapped as version 1) has no wrap-kind byte and is always kind 1.
Bytes 0..48 (the *bound prefix*) go into every segment's associated data; the wrap kind, key id and
wrapped key do not, so re-wrapping (also from a staging key to a KEK) leaves the segments valid.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

from .errors import FormatError
from .keyring import is_valid_kek_id
from .wrapping import WRAP_KEK, WRAPPED_SIZES

__all__ = ["HeaderInfo", "parse_header", "read_header"]

MAGIC = b"CHENC"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: no wrap-kind byte (always a KEK)
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
MAC_SIZE = 32
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 64 * 1024 * 1024  # also bounds what a tampered header can make a reader allocate

_FIXED = struct.Struct(">5sBI32s7s")  # magic, version, segment size, salt, nonce prefix
BOUND_PREFIX_SIZE = _FIXED.size  # 49
_MAX_HEADER_SIZE = BOUND_PREFIX_SIZE + 1 + 1 + 64 + 2 + max(WRAPPED_SIZES.values()) + MAC_SIZE


@dataclass(frozen=True)
class Header:
    """A parsed header. Parsing checks structure only; authenticity is checked with the data key."""

    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    kek_id: str
    wrapped_key: bytes
    mac: bytes
    format_version: int = FORMAT_VERSION
    wrap_kind: int = WRAP_KEK

    @property
    def bound_prefix(self) -> bytes:
        """The fields every segment's associated data binds (everything but the key wrapping)."""
        return _FIXED.pack(MAGIC, self.format_version, self.segment_size, self.salt, self.nonce_prefix)

    def mac_input(self) -> bytes:
        """The header bytes the MAC covers (all but the MAC itself)."""
        kek_id = self.kek_id.encode("ascii")
        return (
            self.bound_prefix
            + self._kind_bytes
            + bytes([len(kek_id)])
            + kek_id
            + len(self.wrapped_key).to_bytes(2, "big")
            + self.wrapped_key
        )

    @property
    def _kind_bytes(self) -> bytes:
        return bytes([self.wrap_kind]) if self.format_version >= 2 else b""

    def to_bytes(self) -> bytes:
        return self.mac_input() + self.mac

    @property
    def size(self) -> int:
        return (
            BOUND_PREFIX_SIZE
            + len(self._kind_bytes)
            + 1
            + len(self.kek_id)
            + 2
            + len(self.wrapped_key)
            + MAC_SIZE
        )

    def info(self) -> HeaderInfo:
        return HeaderInfo(
            format_version=self.format_version,
            wrap_kind=self.wrap_kind,
            kek_id=self.kek_id,
            segment_size=self.segment_size,
            header_size=self.size,
        )


@dataclass(frozen=True)
class HeaderInfo:
    """The non-secret, *unauthenticated* facts in a header, e.g. to find files still wrapped under an
    old KEK. Do not base security decisions on them; decryption authenticates everything.
    `kek_id` is the id of the wrapping key: a KEK (`wrap_kind` 1) or a staging key pair (2)."""

    format_version: int
    wrap_kind: int
    kek_id: str
    segment_size: int
    header_size: int


def check_segment_size(segment_size: int) -> None:
    if isinstance(segment_size, bool) or not isinstance(segment_size, int):
        raise TypeError("segment_size must be an int")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes")


def _read_exact(src: BinaryIO, size: int) -> bytes:
    parts = []
    remaining = size
    while remaining:
        chunk = src.read(remaining)
        if chunk is None:
            raise FormatError("source stream returned no data (non-blocking streams are not supported)")
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError("expected a binary stream")
        if not chunk:
            raise FormatError("truncated header: this is not a complete encrypted file")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_parsed(src: BinaryIO) -> tuple[Header, bytes]:
    fixed = _read_exact(src, BOUND_PREFIX_SIZE)
    magic, version, segment_size, salt, nonce_prefix = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise FormatError("not an encrypted Clearinghouse file (bad magic bytes)")
    if version not in _READABLE_VERSIONS:
        raise FormatError(
            f"unsupported encrypted-file format version {version} (this build reads "
            f"{', '.join(map(str, _READABLE_VERSIONS))})"
        )
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise FormatError("malformed header: segment size out of range")
    kind_bytes = _read_exact(src, 1) if version >= 2 else b""
    wrap_kind = kind_bytes[0] if kind_bytes else WRAP_KEK
    if wrap_kind not in WRAPPED_SIZES:
        raise FormatError("malformed header: unknown key-wrapping kind")
    id_len = _read_exact(src, 1)[0]
    raw_id = _read_exact(src, id_len) if id_len else b""
    try:
        kek_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        kek_id = ""
    if not is_valid_kek_id(kek_id):
        raise FormatError("malformed header: invalid KEK id")
    wrapped_len_bytes = _read_exact(src, 2)
    wrapped_len = int.from_bytes(wrapped_len_bytes, "big")
    if wrapped_len != WRAPPED_SIZES[wrap_kind]:
        raise FormatError("malformed header: unexpected wrapped-key length")
    wrapped_key = _read_exact(src, wrapped_len)
    mac = _read_exact(src, MAC_SIZE)
    header = Header(
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        kek_id=kek_id,
        wrapped_key=wrapped_key,
        mac=mac,
        format_version=version,
        wrap_kind=wrap_kind,
    )
    raw = fixed + kind_bytes + bytes([id_len]) + raw_id + wrapped_len_bytes + wrapped_key + mac
    return header, raw


def read_header(src: BinaryIO) -> bytes:
    """Read exactly the header from `src`, leaving it at the first segment (e.g. to re-wrap a file
    stored as header + segments without loading the segments)."""
    return _read_parsed(src)[1]


def parse_header_bytes(header: bytes) -> Header:
    if not isinstance(header, (bytes, bytearray, memoryview)):
        raise TypeError("header must be bytes")
    stream = io.BytesIO(bytes(header[: _MAX_HEADER_SIZE + 1]))
    parsed, _ = _read_parsed(stream)
    if parsed.size != len(header):
        raise FormatError(
            "header length does not match its fields: pass exactly the header (see read_header), "
            "or the header is damaged"
        )
    return parsed


def parse_header(header: bytes) -> HeaderInfo:
    """Structural facts of a header (which KEK wraps it, segment size), without any key."""
    return parse_header_bytes(header).info()
