"""Key-encryption keys (KEKs), staging key pairs, and the keyring that holds them.

A KEK never encrypts data: it only wraps the per-file data keys (see `envelope`). That keeps rotation
cheap: a new KEK becomes *current* for new files, old files are re-wrapped header by header
(`rewrap_header`), and a retired KEK may be dropped from the keyring once nothing is wrapped under it.

A *staging key* is an X25519 key pair. Its public half (`StagingPublicKey`, not secret) is all that a
process which only *writes* encrypted files needs, e.g. the web process encrypting uploads as they
stream in: it wraps each file's data key to the public key, and only a holder of the keyring (a
worker) can unwrap it. Staging keys rotate with the KEKs; old ones stay until nothing uses them.

Serialised form (a JSON file with mode 0600, or the same JSON, optionally base64-encoded, in an
environment variable)::

    {"format": "clearinghouse-keyring", "version": 2, "current": "kek-2026-11-25-ab12",
     "keys": [{"id": "kek-2026-11-25-ab12", "key": "<base64 of 32 bytes>", "created": "2026-11-25T10:00:00Z"}],
     "staging_current": "stg-2026-11-25-cd34",
     "staging_keys": [{"id": "stg-2026-11-25-cd34", "private": "<base64 of the 32-byte X25519 key>",
                       "created": "2026-11-25T10:00:00Z"}]}

Version 1 (no staging keys) is still read. The public half is written separately
(`StagingPublicKey.to_json`: format "clearinghouse-staging-public-key", id, base64 public key).

Keyrings are immutable: `rotated()` and `without()` return new ones, which the caller persists with
`save()`. Key bytes never appear in `repr()` or in error messages.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from Crypto.Protocol.DH import import_x25519_private_key, import_x25519_public_key

from .errors import KeyringError, UnknownKeyError

__all__ = [
    "DEFAULT_KEYRING_ENV_VAR",
    "KEK_SIZE",
    "KeyEncryptionKey",
    "Keyring",
    "StagingKey",
    "StagingPublicKey",
    "create_dev_keyring_file",
    "generate_kek_id",
    "is_valid_kek_id",
]

KEK_SIZE = 32  # AES-256
DEFAULT_KEYRING_ENV_VAR = "CLEARINGHOUSE_KEYRING"
X25519_KEY_SIZE = 32
_FORMAT_NAME = "clearinghouse-keyring"
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1: KEKs only
_PUBLIC_FORMAT_NAME = "clearinghouse-staging-public-key"
_PUBLIC_FORMAT_VERSION = 1
# Ids travel in every file header (1-byte length) and in log lines: keep them short and printable.
_KEK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def is_valid_kek_id(kek_id: object) -> bool:
    """Whether `kek_id` is acceptable as a KEK id (1-64 chars of `[A-Za-z0-9._:-]`, starting alphanumeric)."""
    return isinstance(kek_id, str) and _KEK_ID_RE.fullmatch(kek_id) is not None


def generate_kek_id(*, now: dt.datetime | None = None, prefix: str = "kek") -> str:
    """A fresh id like `kek-2026-11-25-ab12` (`stg-...` for staging keys): the date says how old a key
    is at a glance, the random suffix keeps two keys made on the same day apart."""
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    return f"{prefix}-{day}-{secrets.token_hex(2)}"


def _b64_field(entry: Mapping[str, object], name: str, key_id: str) -> bytes:
    raw = entry.get(name)
    try:
        return base64.b64decode(raw if isinstance(raw, str) else "!", validate=True)
    except (ValueError, binascii.Error):
        raise KeyringError(f'key {key_id!r}: "{name}" must be standard base64') from None


def _entry_id(entry: object, index: int, what: str) -> str:
    key_id = entry.get("id") if isinstance(entry, Mapping) else None
    if not isinstance(key_id, str):
        raise KeyringError(f'{what} entry #{index} needs a string "id"')
    if not is_valid_kek_id(key_id):
        raise KeyringError(f"{what} entry #{index} has an invalid id")
    return key_id


def _check_key_fields(what: str, key_id: object, key: object, size: int, algorithm: str) -> None:
    if not is_valid_kek_id(key_id):
        raise KeyringError(
            f"invalid {what} id: use 1-64 characters of [A-Za-z0-9._:-], starting alphanumeric"
        )
    if not isinstance(key, bytes) or len(key) != size:
        raise KeyringError(f"{what} {key_id!r} must be exactly {size} bytes ({algorithm})")


def _utc_now_text() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KeyEncryptionKey:
    """One KEK: an id (stored in file headers) and 32 secret bytes (kept out of `repr`)."""

    id: str
    key: bytes = field(repr=False)
    created: str | None = None

    def __post_init__(self) -> None:
        _check_key_fields("KEK", self.id, self.key, KEK_SIZE, "AES-256")

    @classmethod
    def generate(cls, kek_id: str | None = None) -> KeyEncryptionKey:
        """A new random KEK from the OS CSPRNG."""
        return cls(id=kek_id or generate_kek_id(), key=secrets.token_bytes(KEK_SIZE), created=_utc_now_text())


@dataclass(frozen=True)
class StagingPublicKey:
    """The public half of a staging key pair: an id and a raw 32-byte X25519 public key. Not secret:
    it lets a process encrypt files that only the keyring's holder can decrypt."""

    id: str
    key: bytes

    def __post_init__(self) -> None:
        _check_key_fields("staging public key", self.id, self.key, X25519_KEY_SIZE, "X25519")
        try:
            import_x25519_public_key(self.key)
        except ValueError:
            raise KeyringError(f"staging public key {self.id!r} is not a valid X25519 public key") from None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": _PUBLIC_FORMAT_NAME,
                "version": _PUBLIC_FORMAT_VERSION,
                "id": self.id,
                "key": base64.b64encode(self.key).decode("ascii"),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StagingPublicKey:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise KeyringError("staging public key is not valid JSON") from None
        if (
            not isinstance(doc, Mapping)
            or doc.get("format") != _PUBLIC_FORMAT_NAME
            or doc.get("version") != _PUBLIC_FORMAT_VERSION
        ):
            raise KeyringError(
                f'staging public key must have "format": "{_PUBLIC_FORMAT_NAME}" and '
                f'"version": {_PUBLIC_FORMAT_VERSION}'
            )
        key_id = _entry_id(doc, 0, "staging public key")
        return cls(id=key_id, key=_b64_field(doc, "key", key_id))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> StagingPublicKey:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise KeyringError(
                f"cannot read staging public key file {os.fspath(path)!r}: {exc.strerror}"
            ) from None
        return cls.from_json(text)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the JSON form, replacing any older public key atomically (mode 0644: it is public)."""
        _write_private_file(Path(path), self.to_json().encode("utf-8") + b"\n", overwrite=True, mode=0o644)


@dataclass(frozen=True)
class StagingKey:
    """A staging key pair: an id and the raw 32-byte X25519 private key (kept out of `repr`)."""

    id: str
    private: bytes = field(repr=False)
    created: str | None = None

    def __post_init__(self) -> None:
        _check_key_fields("staging key", self.id, self.private, X25519_KEY_SIZE, "X25519")

    @classmethod
    def generate(cls, key_id: str | None = None) -> StagingKey:
        return cls(
            id=key_id or generate_kek_id(prefix="stg"),
            private=secrets.token_bytes(X25519_KEY_SIZE),
            created=_utc_now_text(),
        )

    @property
    def public(self) -> StagingPublicKey:
        key = import_x25519_private_key(self.private).public_key().export_key(format="raw")
        return StagingPublicKey(id=self.id, key=key)


class Keyring:
    """An immutable set of KEKs by id, one of them current (used to wrap new data keys), and of staging
    key pairs, one of them current (its public half is what uploads are encrypted to)."""

    __slots__ = ("_current_id", "_keys", "_staging", "_staging_current_id")

    def __init__(
        self,
        keys: Iterable[KeyEncryptionKey],
        *,
        current_id: str,
        staging: Iterable[StagingKey] = (),
        staging_current_id: str | None = None,
    ) -> None:
        by_id: dict[str, KeyEncryptionKey] = {}
        for kek in keys:
            if not isinstance(kek, KeyEncryptionKey):
                raise TypeError("Keyring takes KeyEncryptionKey objects")
            if kek.id in by_id:
                raise KeyringError(f"duplicate KEK id {kek.id!r} in keyring")
            by_id[kek.id] = kek
        if current_id not in by_id:
            raise KeyringError("the current KEK id is not among the keyring's keys")
        staging_by_id: dict[str, StagingKey] = {}
        for pair in staging:
            if not isinstance(pair, StagingKey):
                raise TypeError("Keyring takes StagingKey objects as staging keys")
            if pair.id in by_id or pair.id in staging_by_id:
                raise KeyringError(f"duplicate key id {pair.id!r} in keyring")
            staging_by_id[pair.id] = pair
        if (staging_current_id is None) != (not staging_by_id) or (
            staging_current_id is not None and staging_current_id not in staging_by_id
        ):
            raise KeyringError("the current staging key id is not among the keyring's staging keys")
        self._keys = by_id
        self._current_id = current_id
        self._staging = staging_by_id
        self._staging_current_id = staging_current_id

    # -- reading ---------------------------------------------------------------------------------

    @property
    def current(self) -> KeyEncryptionKey:
        """The KEK that wraps the data keys of new files and of re-wrapped headers."""
        return self._keys[self._current_id]

    @property
    def current_id(self) -> str:
        return self._current_id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, kek_id: str) -> KeyEncryptionKey:
        """The KEK with this id; `UnknownKeyError` if it has been retired or was never loaded."""
        try:
            return self._keys[kek_id]
        except KeyError:
            raise UnknownKeyError(kek_id) from None

    def __contains__(self, kek_id: object) -> bool:
        return kek_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return (
            f"Keyring(ids={list(self._keys)!r}, current_id={self._current_id!r}, "
            f"staging_ids={list(self._staging)!r}, staging_current_id={self._staging_current_id!r})"
        )

    @property
    def staging_ids(self) -> tuple[str, ...]:
        return tuple(self._staging)

    @property
    def staging_current(self) -> StagingKey:
        """The staging key pair whose public half new uploads are encrypted to."""
        if self._staging_current_id is None:
            raise KeyringError("the keyring has no staging key pair; rotate it to add one")
        return self._staging[self._staging_current_id]

    def staging_get(self, key_id: str) -> StagingKey:
        """The staging key pair with this id; `UnknownKeyError` if it was retired or never loaded."""
        try:
            return self._staging[key_id]
        except KeyError:
            raise UnknownKeyError(key_id) from None

    # -- changing (returns new keyrings) --------------------------------------------------------

    @classmethod
    def generate(cls, kek_id: str | None = None) -> Keyring:
        """A keyring with one fresh KEK and one fresh staging key pair, both current."""
        kek = KeyEncryptionKey.generate(kek_id)
        pair = StagingKey.generate()
        return cls([kek], current_id=kek.id, staging=[pair], staging_current_id=pair.id)

    def _replace(
        self,
        *,
        keys: Iterable[KeyEncryptionKey] | None = None,
        current_id: str | None = None,
        staging: Iterable[StagingKey] | None = None,
        staging_current_id: str | None = None,
    ) -> Keyring:
        return Keyring(
            self._keys.values() if keys is None else keys,
            current_id=current_id or self._current_id,
            staging=self._staging.values() if staging is None else staging,
            staging_current_id=staging_current_id or self._staging_current_id,
        )

    def with_new_staging_key(self, new_pair: StagingKey | None = None) -> Keyring:
        """This keyring plus a new staging key pair that becomes current (old pairs stay, so uploads
        encrypted to them while the new public key is being deployed stay readable)."""
        pair = new_pair or StagingKey.generate()
        return self._replace(staging=[*self._staging.values(), pair], staging_current_id=pair.id)

    def rotated(
        self, new_key: KeyEncryptionKey | None = None, *, new_staging_key: StagingKey | None = None
    ) -> Keyring:
        """This keyring plus a new KEK and a new staging key pair, both current. Old keys stay, so old
        files stay readable."""
        kek = new_key or KeyEncryptionKey.generate()
        return self._replace(keys=[*self._keys.values(), kek], current_id=kek.id).with_new_staging_key(
            new_staging_key
        )

    def without(self, kek_id: str) -> Keyring:
        """This keyring minus a retired KEK or staging key pair. Files still wrapped under it become
        unreadable (`UnknownKeyError`), so re-wrap them first. Current keys cannot be removed."""
        if kek_id in self._staging:
            if kek_id == self._staging_current_id:
                raise KeyringError(f"cannot remove the current staging key {kek_id!r}; rotate first")
            return self._replace(staging=[p for p in self._staging.values() if p.id != kek_id])
        self.get(kek_id)
        if kek_id == self._current_id:
            raise KeyringError(f"cannot remove the current KEK {kek_id!r}; rotate first")
        return self._replace(keys=[k for k in self._keys.values() if k.id != kek_id])

    # -- serialisation --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The keyring as JSON text. Contains secret key bytes: write it only to protected places."""
        doc: dict[str, object] = {
            "format": _FORMAT_NAME,
            "version": _FORMAT_VERSION,
            "current": self._current_id,
            "keys": [
                {"id": k.id, "key": base64.b64encode(k.key).decode("ascii"), "created": k.created}
                for k in self._keys.values()
            ],
        }
        if self._staging:
            doc["staging_current"] = self._staging_current_id
            doc["staging_keys"] = [
                {"id": p.id, "private": base64.b64encode(p.private).decode("ascii"), "created": p.created}
                for p in self._staging.values()
            ]
        return json.dumps(doc, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """Parse the JSON form. Errors say which field is wrong, never its value."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise KeyringError("keyring is not valid JSON") from None
        return cls._from_document(doc)

    @classmethod
    def _from_document(cls, doc: object) -> Keyring:
        if not isinstance(doc, Mapping):
            raise KeyringError("keyring JSON must be an object")
        if doc.get("format") != _FORMAT_NAME or doc.get("version") not in _READABLE_VERSIONS:
            raise KeyringError(
                f'keyring must have "format": "{_FORMAT_NAME}" and "version": {_FORMAT_VERSION}'
            )
        current = doc.get("current")
        entries = doc.get("keys")
        if not isinstance(current, str) or not isinstance(entries, list) or not entries:
            raise KeyringError('keyring needs a string "current" and a non-empty "keys" list')
        keys = []
        for index, entry in enumerate(entries):
            kek_id = _entry_id(entry, index, "keyring")
            created = entry.get("created")
            keys.append(
                KeyEncryptionKey(
                    id=kek_id,
                    key=_b64_field(entry, "key", kek_id),
                    created=created if isinstance(created, str) else None,
                )
            )
        staging_current = doc.get("staging_current")
        staging_entries = doc.get("staging_keys", [])
        if (staging_current is not None and not isinstance(staging_current, str)) or not isinstance(
            staging_entries, list
        ):
            raise KeyringError('keyring "staging_current" must be a string and "staging_keys" a list')
        staging = []
        for index, entry in enumerate(staging_entries):
            key_id = _entry_id(entry, index, "staging key")
            created = entry.get("created")
            staging.append(
                StagingKey(
                    id=key_id,
                    private=_b64_field(entry, "private", key_id),
                    created=created if isinstance(created, str) else None,
                )
            )
        return cls(keys, current_id=current, staging=staging, staging_current_id=staging_current)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load a keyring file (JSON)."""
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise KeyringError(f"cannot read keyring file {os.fspath(path)!r}: {exc.strerror}") from None
        return cls.from_json(text)

    @classmethod
    def from_env(
        cls, var: str = DEFAULT_KEYRING_ENV_VAR, *, environ: Mapping[str, str] | None = None
    ) -> Keyring:
        """Load from an environment variable holding the JSON form, or its base64 (one token, easier to
        pass through secret stores and `.env` files)."""
        env = os.environ if environ is None else environ
        value = env.get(var)
        if not value or not value.strip():
            raise KeyringError(f"environment variable {var} is not set")
        value = value.strip()
        if not value.startswith("{"):
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise KeyringError(f"{var} must hold keyring JSON or its standard base64") from None
        try:
            return cls.from_json(value)
        except KeyringError as exc:
            raise KeyringError(f"{var}: {exc}") from None

    def to_env_value(self) -> str:
        """The base64 form for `from_env` (secret: put it only in a secret store)."""
        return base64.b64encode(self.to_json().encode("utf-8")).decode("ascii")

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the JSON form with mode 0600. Refuses to replace an existing file unless `overwrite`
        (then atomically: a crash leaves the old keyring or the new one, never half of one)."""
        _write_private_file(Path(path), self.to_json().encode("utf-8") + b"\n", overwrite=overwrite)


def _write_private_file(path: Path, data: bytes, *, overwrite: bool, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        # O_EXCL: never clobber an existing keyring (losing a KEK loses every file wrapped under it).
        # Mode 0600 is given at creation, so the key is never readable by others, not even briefly.
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode & 0o600
            )
        except FileExistsError:
            raise KeyringError(
                f"keyring file {str(path)!r} already exists; refusing to overwrite it"
            ) from None
        tmp_name = None
    else:
        # Write a 0600 temporary file and rename it over the old one: a crash leaves either keyring whole.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # in case of an unusual umask or platform
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if tmp_name is not None:
            os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name if tmp_name is not None else path)
        except FileNotFoundError:
            pass
        raise


def create_dev_keyring_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Keyring:
    """Create a local keyring file (mode 0600) with one fresh current KEK and staging key pair, for
    development and tests.

    The key sits next to the data it protects, so this gives no protection against someone who can
    read the disk: production keyrings come from a secret store (see `Keyring.from_env`). Callers
    should say so when they use it.
    """
    keyring = Keyring.generate()
    keyring.save(path, overwrite=overwrite)
    return keyring
