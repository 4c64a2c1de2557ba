"""Envelope encryption of datasets at rest: streaming, segmented AES-256-GCM under per-file data keys.

Design (format version 2; byte layout in `header`)
--------------------------------------------------
* **Data key.** Every call to `encrypt_stream` draws a fresh random 256-bit data key (so each dataset
  version, which the service writes once, has its own). From it and a random 32-byte salt, HKDF-SHA256
  derives two independent keys: the *payload key* (AES-256-GCM over the segments) and the *header key*
  (HMAC-SHA256 over the header). This mirrors the age file format.
* **Key wrapping.** The data key is stored in the header wrapped under the current KEK with AES key wrap
  (RFC 3394, NIST SP 800-38F, `AES.MODE_KW`). Why KW rather than AES-GCM: it is the standard
  construction made for exactly this job (deterministic, no nonce to manage or to collide across
  millions of wraps under one long-lived KEK, integrity-checked), and it is what HSMs and cloud KMSs
  expose (e.g. PKCS#11 `CKM_AES_KEY_WRAP`), so moving KEKs into one later changes no file. KW has no
  associated data; it does not need any here: a wrapped key moved under another KEK id, a wrong KEK
  under the right id, or a flipped bit all fail the 64-bit integrity check value, and the header MAC
  (keyed from the unwrapped data key) then covers every header byte, KEK id included.
  Alternatively (`recipient=`, a `StagingPublicKey`) the data key is wrapped to a staging public key
  (X25519 + HKDF + KW, see `wrapping`): a writer that holds only the public key (the web process
  encrypting uploads) can encrypt but never decrypt; the keyring's staging private key unwraps it.
* **Segments (STREAM, Hoang-Reyhanitabar-Rogaway-Vizár 2015).** The plaintext is cut into segments of
  S bytes (default 1 MiB; the last one shorter, empty only for empty input). Segment i is sealed with
  the payload key and the 12-byte nonce ``nonce_prefix(7) || uint32_be(i) || last_flag(1)``, where
  last_flag is 1 only on the final segment. Hence reordering or swapping segments (wrong counter),
  dropping the tail (a non-final segment would have to pass as final), truncating mid-segment (the
  shortened last segment's tag fails) and appending (the real final segment would have to pass as
  non-final) are all detected. Each segment is ``ciphertext || 16-byte tag``. The bulk AES-GCM runs
  in OpenSSL (via `cryptography`) when available, else in pycryptodome: same bytes (see `_aead`).
* **Associated data.** Every segment's AD is ``SHA-256(domain || bound_prefix || uint32_be(len(ctx)) ||
  ctx)``: the bound prefix (magic, version, segment size, salt, nonce prefix) and the caller's
  canonical context (organisation, dataset, version...). A file copied under another dataset, or
  decrypted with the wrong context, fails on its first segment.
* **Rotation.** The segment AD deliberately leaves out the KEK id and the wrapped key, and the payload
  key depends only on the data key and salt, which re-wrapping preserves. So `rewrap_header` unwraps
  the data key with the old KEK (or staging key), verifies the header MAC, wraps the same data key
  under the current KEK and recomputes the MAC: a new header, byte-identical segments. The wrapped key authenticates
  itself (KW) and the MAC re-binds it to the rest of the header. Re-wrapping needs no context, so a
  rotation job can run over storage without knowing what each file is.
* **Header MAC.** Checked before any segment is read: a damaged header or a wrong key fails early and
  without allocating a (possibly tampered) segment size, and it makes the data key committing (GCM
  alone is not), so one ciphertext cannot be made to decrypt validly under two keys.

Caveats: decryption writes each segment as soon as it is authenticated, so an `IntegrityError` can
come after some plaintext has reached `dst`; write to a temporary location and publish it only when
`decrypt_stream` returns (`decrypt_to_bytes` is all-or-nothing; after a failed `decrypt_into` the
buffer holds garbage). Python cannot reliably erase key bytes from memory; keys live only as long as
the call.
"""

from __future__ import annotations

import io
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import BinaryIO

from Crypto.Hash import HMAC, SHA256

from ._aead import TAG_SIZE, new_segment_cipher
from .context import Context, canonical_context
from .errors import CryptoError, IntegrityError
from .header import (
    NONCE_PREFIX_SIZE,
    SALT_SIZE,
    Header,
    HeaderInfo,
    _read_parsed,
    check_segment_size,
    parse_header_bytes,
    read_header,
)
from .keyring import Keyring, StagingPublicKey
from .wrapping import (
    WRAP_KEK,
    WRAP_X25519,
    hkdf_sha256,
    unwrap_kek,
    unwrap_x25519,
    wrap_kek,
    wrap_x25519,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "EncryptionInfo",
    "StreamEncryptor",
    "decrypt_into",
    "decrypt_stream",
    "decrypt_to_bytes",
    "encrypt_bytes",
    "encrypt_stream",
    "plaintext_size",
    "rewrap_header",
    "rewrap_stream",
]

DEFAULT_SEGMENT_SIZE = 1024 * 1024
DATA_KEY_SIZE = 32
_MAX_SEGMENTS = 2**32  # the counter is 32 bits

_PAYLOAD_INFO = b"clearinghouse.crypto/v1 payload key"
_HEADER_INFO = b"clearinghouse.crypto/v1 header key"
_AD_DOMAIN = b"clearinghouse.crypto/v1 segment ad\x00"


@dataclass(frozen=True)
class EncryptionInfo:
    """What was written (or read): enough to record in the dataset version and to sanity-check sizes.
    `kek_id` is the id of the key that wraps the data key (a KEK, or a staging key pair)."""

    kek_id: str
    segment_size: int
    segment_count: int
    plaintext_size: int
    header_size: int
    ciphertext_size: int  # header + segments: the size of the encrypted file


# -- key handling ------------------------------------------------------------------------------------


def _derive_keys(data_key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    payload_key = hkdf_sha256(data_key, salt, _PAYLOAD_INFO)
    header_key = hkdf_sha256(data_key, salt, _HEADER_INFO)
    return payload_key, header_key


def _wrap_new(
    keyring: Keyring | None, recipient: StagingPublicKey | None, data_key: bytes
) -> tuple[int, str, bytes]:
    """(wrap kind, key id, wrapped key) for a new file: under the keyring's current KEK, or to a
    staging public key."""
    if keyring is not None and recipient is None:
        kek = keyring.current
        return WRAP_KEK, kek.id, wrap_kek(kek, data_key)
    if recipient is None or keyring is not None:
        raise TypeError("pass exactly one of keyring= (its current KEK) or recipient= (a staging public key)")
    if not isinstance(recipient, StagingPublicKey):
        raise TypeError("recipient must be a StagingPublicKey")
    return WRAP_X25519, recipient.id, wrap_x25519(recipient, data_key)


def _header_mac(header_key: bytes, header: Header) -> bytes:
    return HMAC.new(header_key, header.mac_input(), digestmod=SHA256).digest()


def _open_header(header: Header, keyring: Keyring) -> tuple[bytes, bytes, bytes]:
    """Unwrap the data key and authenticate the header: returns (data key, payload key, header key)."""
    if header.wrap_kind == WRAP_X25519:
        data_key = unwrap_x25519(keyring.staging_get(header.kek_id), header.wrapped_key)
    else:
        data_key = unwrap_kek(keyring.get(header.kek_id), header.wrapped_key)
    payload_key, header_key = _derive_keys(data_key, header.salt)
    try:
        HMAC.new(header_key, header.mac_input(), digestmod=SHA256).verify(header.mac)
    except ValueError:
        raise IntegrityError("header authentication failed: the header was modified") from None
    return data_key, payload_key, header_key


def _segment_ad(header: Header, ctx: bytes) -> bytes:
    return SHA256.new(_AD_DOMAIN + header.bound_prefix + len(ctx).to_bytes(4, "big") + ctx).digest()


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


# -- stream plumbing -----------------------------------------------------------------------------------


def _fill(src: BinaryIO, view: memoryview) -> int:
    """Read into `view` until it is full or the stream ends; returns the bytes read. No per-byte work:
    `readinto` lets the OS write straight into our segment buffer."""
    readinto = getattr(src, "readinto", None)
    total, size = 0, len(view)
    while total < size:
        if readinto is not None:
            got = readinto(view[total:])
        else:
            chunk = src.read(size - total)
            if chunk is not None and not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError("expected a binary stream")
            got = None if chunk is None else len(chunk)
            if got:
                view[total : total + got] = chunk
        if got is None:
            raise CryptoError("source stream returned no data (non-blocking streams are not supported)")
        if got == 0:
            break
        total += got
    return total


def _write_all(dst: BinaryIO, data: memoryview | bytes) -> None:
    written = dst.write(data)
    # Raw (unbuffered) streams may write partially; buffered ones and BytesIO write everything.
    if isinstance(written, int) and written < len(data):
        view = memoryview(data)
        while written < len(view):
            more = dst.write(view[written:])
            if not more:
                raise CryptoError("destination stream accepted no more data")
            written += more


# -- public API ------------------------------------------------------------------------------------------


class StreamEncryptor:
    """Push-style encryption: `write()` chunks as they arrive (an HTTP upload, say), then `finish()`.

    Holds at most one segment plus one byte: a segment is sealed only once a byte beyond it has
    arrived, because STREAM must know whether a segment is the final one before sealing it.

    The data key is wrapped under the current KEK of `keyring`, or to `recipient` (a staging public
    key: then this process needs, and gets, no key that could decrypt what it writes).
    """

    def __init__(
        self,
        dst: BinaryIO,
        *,
        keyring: Keyring | None = None,
        recipient: StagingPublicKey | None = None,
        context: Context,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        ctx = canonical_context(context)
        check_segment_size(segment_size)
        data_key = secrets.token_bytes(DATA_KEY_SIZE)
        wrap_kind, key_id, wrapped_key = _wrap_new(keyring, recipient, data_key)
        salt = secrets.token_bytes(SALT_SIZE)
        payload_key, header_key = _derive_keys(data_key, salt)
        unsigned = Header(
            segment_size=segment_size,
            salt=salt,
            nonce_prefix=secrets.token_bytes(NONCE_PREFIX_SIZE),
            kek_id=key_id,
            wrapped_key=wrapped_key,
            mac=b"",
            wrap_kind=wrap_kind,
        )
        self._header = replace(unsigned, mac=_header_mac(header_key, unsigned))
        self._header_size = len(self._header.to_bytes())
        self._dst = dst
        self._kek_id = key_id
        self._segment_size = segment_size
        self._ad = _segment_ad(self._header, ctx)
        self._cipher = new_segment_cipher(payload_key)
        self._buffer = bytearray(segment_size + 1)
        self._view = memoryview(self._buffer)
        self._sealed = memoryview(bytearray(segment_size + TAG_SIZE))
        self._have = self._index = self._plaintext_size = 0
        self._finished = False
        _write_all(dst, self._header.to_bytes())

    def _seal(self, length: int, final: bool) -> None:
        if self._index >= _MAX_SEGMENTS:
            raise CryptoError("input too large for this segment size (more than 2**32 segments)")
        nonce = _nonce(self._header.nonce_prefix, self._index, final)
        self._cipher.seal_into(nonce, self._ad, self._view[:length], self._sealed)
        _write_all(self._dst, self._sealed[: length + TAG_SIZE])
        self._plaintext_size += length
        self._index += 1

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise CryptoError("write after finish")
        data = memoryview(data).cast("B")
        size = self._segment_size
        while data:
            take = min(len(data), size + 1 - self._have)
            self._view[self._have : self._have + take] = data[:take]
            self._have += take
            data = data[take:]
            if self._have == size + 1:  # a full segment and the look-ahead byte: not final
                self._seal(size, final=False)
                self._buffer[0] = self._buffer[size]
                self._have = 1

    def readinto_from(self, src: BinaryIO) -> None:
        """Feeds everything `src` has, straight into the segment buffer (no intermediate copies)."""
        size = self._segment_size
        while True:
            got = _fill(src, self._view[self._have :])
            self._have += got
            if self._have <= size:
                return
            self._seal(size, final=False)
            self._buffer[0] = self._buffer[size]
            self._have = 1

    def finish(self) -> EncryptionInfo:
        if self._finished:
            raise CryptoError("finish called twice")
        self._finished = True
        self._seal(self._have, final=True)
        return EncryptionInfo(
            kek_id=self._kek_id,
            segment_size=self._segment_size,
            segment_count=self._index,
            plaintext_size=self._plaintext_size,
            header_size=self._header_size,
            ciphertext_size=self._header_size + self._plaintext_size + self._index * TAG_SIZE,
        )


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    keyring: Keyring | None = None,
    recipient: StagingPublicKey | None = None,
    context: Context,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> EncryptionInfo:
    """Encrypt `src` to `dst` under a fresh data key wrapped with the keyring's current KEK (or to the
    staging public key `recipient`).

    Memory is bounded by one segment, so datasets of any size stream through. `context` (bytes, or a
    flat mapping such as organisation/dataset/version) must be given again, identical, to decrypt.
    """
    encryptor = StreamEncryptor(
        dst, keyring=keyring, recipient=recipient, context=context, segment_size=segment_size
    )
    encryptor.readinto_from(src)
    return encryptor.finish()


def decrypt_stream(src: BinaryIO, dst: BinaryIO, *, keyring: Keyring, context: Context) -> EncryptionInfo:
    """Decrypt and authenticate `src` into `dst`, one segment at a time.

    Raises `UnknownKeyError` if the file's KEK (or staging key) is not in `keyring`, `IntegrityError` on
    any tampering,
    truncation, reordering, appended data, wrong KEK or wrong context. Plaintext of segments before the
    failing one may already be in `dst`: treat `dst` as garbage unless this returns.
    """
    return _decrypt(src, keyring=keyring, context=context, make_sink=lambda header: _StreamSink(dst, header))


class _StreamSink:
    """Decrypts into one segment-sized buffer, written to `dst` once authenticated."""

    def __init__(self, dst: BinaryIO, header: Header) -> None:
        self._dst = dst
        self._plain = memoryview(bytearray(header.segment_size))

    def region(self, size: int) -> memoryview:
        return self._plain[:size]

    def commit(self, size: int) -> None:
        _write_all(self._dst, self._plain[:size])


class _BufferSink:
    """Decrypts straight into a caller's buffer (no per-segment copy)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self.offset = 0

    def region(self, size: int) -> memoryview:
        if self.offset + size > len(self._view):
            raise IntegrityError(
                "plaintext does not fit the buffer: the file is larger than expected (modified, or the "
                "expected size is wrong)"
            )
        return self._view[self.offset : self.offset + size]

    def commit(self, size: int) -> None:
        self.offset += size


_Sink = _StreamSink | _BufferSink


def _decrypt(
    src: BinaryIO, *, keyring: Keyring, context: Context, make_sink: Callable[[Header], _Sink]
) -> EncryptionInfo:
    """The STREAM decryption loop; `make_sink` says where authenticated plaintext goes."""
    ctx = canonical_context(context)
    header, header_bytes = _read_parsed(src)
    _, payload_key, _ = _open_header(header, keyring)
    ad = _segment_ad(header, ctx)
    sink = make_sink(header)

    segment_size = header.segment_size
    sealed_size = segment_size + TAG_SIZE
    cipher = new_segment_cipher(payload_key)
    buffer = bytearray(sealed_size + 1)  # one sealed segment + one byte of look-ahead
    view = memoryview(buffer)
    have = index = plaintext_size = 0
    while True:
        have += _fill(src, view[have:])
        final = have <= sealed_size
        length = have if final else sealed_size
        if length < TAG_SIZE or (final and length == TAG_SIZE and index > 0):
            # Too short for a tag, or an empty non-first final segment (never written): truncated.
            raise IntegrityError(f"encrypted file is truncated (segment {index} is incomplete or missing)")
        if index >= _MAX_SEGMENTS:
            raise IntegrityError("encrypted file has more segments than the format allows")
        body = length - TAG_SIZE
        if not cipher.open_into(
            _nonce(header.nonce_prefix, index, final), ad, view[:length], sink.region(body)
        ):
            raise IntegrityError(
                f"segment {index} failed authentication: wrong context (e.g. another dataset), or the "
                "file was modified, truncated, reordered or extended"
            )
        sink.commit(body)
        plaintext_size += body
        index += 1
        if final:
            break
        buffer[0] = buffer[sealed_size]
        have = 1
    return EncryptionInfo(
        kek_id=header.kek_id,
        segment_size=segment_size,
        segment_count=index,
        plaintext_size=plaintext_size,
        header_size=len(header_bytes),
        ciphertext_size=len(header_bytes) + plaintext_size + index * TAG_SIZE,
    )


def _plaintext_size(sealed_total: int, segment_size: int) -> int:
    """Plaintext bytes in `sealed_total` bytes of segments (exact for an intact file)."""
    segments = max(1, -(-sealed_total // (segment_size + TAG_SIZE)))
    return max(0, sealed_total - segments * TAG_SIZE)


def encrypt_bytes(
    data: bytes | bytearray | memoryview,
    *,
    keyring: Keyring | None = None,
    recipient: StagingPublicKey | None = None,
    context: Context,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """`encrypt_stream` for data already in memory; returns the whole encrypted file."""
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(data),
        out,
        keyring=keyring,
        recipient=recipient,
        context=context,
        segment_size=segment_size,
    )
    return out.getvalue()


def decrypt_to_bytes(
    src: bytes | bytearray | memoryview | BinaryIO, *, keyring: Keyring, context: Context
) -> bytes:
    """Decrypt a whole encrypted file (bytes or a readable stream) into memory. All or nothing: on any
    error no plaintext is returned."""
    stream = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    out = io.BytesIO()  # grows by realloc and getvalue() hands over its buffer: one pass over fresh memory
    decrypt_stream(stream, out, keyring=keyring, context=context)
    return out.getvalue()


def decrypt_into(
    src: bytes | bytearray | memoryview | BinaryIO,
    buffer: bytearray | memoryview,
    *,
    keyring: Keyring,
    context: Context,
) -> EncryptionInfo:
    """Decrypt a whole file straight into a caller-owned writable buffer (any object with the writable
    buffer protocol, e.g. a `bytearray` or a mutable `pyarrow.allocate_buffer(n)`); returns the info,
    whose `plaintext_size` says how many leading bytes are valid.

    This is the fast path for loaders: no per-segment copy and no fresh Python allocation, so a Parquet
    reader can decrypt into its own (already mapped) memory pool. Size the buffer with `plaintext_size()`
    or the `EncryptionInfo` recorded at encryption. On any error the buffer holds garbage.
    """
    stream = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError("decrypt_into needs a writable buffer")
    sink = _BufferSink(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
    return _decrypt(stream, keyring=keyring, context=context, make_sink=lambda header: sink)


def plaintext_size(*, header: bytes, encrypted_size: int) -> int:
    """Exact plaintext size of an intact encrypted file of `encrypted_size` bytes (header included),
    from its header alone: lets a loader allocate once before decrypting (see `decrypt_into`)."""
    parsed = parse_header_bytes(header)
    return _plaintext_size(encrypted_size - parsed.size, parsed.segment_size)


def rewrap_header(header: bytes, *, keyring: Keyring) -> bytes:
    """Re-wrap a file's data key under the keyring's current KEK; returns the new header.

    The segments that follow the old header stay byte-for-byte valid after the new one, so rotation
    rewrites ~150 bytes per file, not the data. A file wrapped to a staging key comes out wrapped
    under the current KEK like any other. The old KEK (or staging key) must still be in `keyring`
    (`UnknownKeyError` otherwise); a damaged header raises `IntegrityError` rather than being
    laundered into a freshly authenticated one. No context is needed. The new header may differ in
    length (KEK ids differ in length), so write it followed by the old file's segments (`rewrap_stream`).
    """
    parsed = parse_header_bytes(header)
    data_key, _, header_key = _open_header(parsed, keyring)
    kek = keyring.current
    unsigned = replace(
        parsed, wrap_kind=WRAP_KEK, kek_id=kek.id, wrapped_key=wrap_kek(kek, data_key), mac=b""
    )
    return replace(unsigned, mac=_header_mac(header_key, unsigned)).to_bytes()


def rewrap_stream(
    src: BinaryIO, dst: BinaryIO, *, keyring: Keyring, chunk_size: int = 1024 * 1024
) -> HeaderInfo:
    """Copy an encrypted file with its header re-wrapped under the current KEK (segments copied as is)."""
    new_header = rewrap_header(read_header(src), keyring=keyring)
    _write_all(dst, new_header)
    shutil.copyfileobj(src, dst, chunk_size)
    return parse_header_bytes(new_header).info()
