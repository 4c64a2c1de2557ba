"""Key-encryption keys (KEKs) and the keyring that holds them.

A KEK never encrypts data: it only wraps the per-file data keys (see `envelope`). That keeps rotation
cheap: a new KEK becomes *current* for new files, old files are re-wrapped header by header
(`rewrap_header`), and a retired KEK may be dropped from the keyring once nothing is wrapped under it.

Serialised form (a JSON file with mode 0600, or the same JSON, optionally base64-encoded, in an
environment variable)::

    {"format": "clearinghouse-keyring", "version": 1, "current": "kek-2026-11-25-ab12",
     "keys": [{"id": "kek-2026-11-25-ab12", "key": "<base64 of 32 bytes>", "created": "2026-11-25T10:00:00Z"}]}

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

from .errors import KeyringError, UnknownKeyError

__all__ = [
    "DEFAULT_KEYRING_ENV_VAR",
    "KEK_SIZE",
    "KeyEncryptionKey",
    "Keyring",
    "create_dev_keyring_file",
    "generate_kek_id",
    "is_valid_kek_id",
]

KEK_SIZE = 32  # AES-256
DEFAULT_KEYRING_ENV_VAR = "CLEARINGHOUSE_KEYRING"
_FORMAT_NAME = "clearinghouse-keyring"
_FORMAT_VERSION = 1
# Ids travel in every file header (1-byte length) and in log lines: keep them short and printable.
_KEK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def is_valid_kek_id(kek_id: str) -> bool:
    """Whether `kek_id` is acceptable as a KEK id (1-64 chars of `[A-Za-z0-9._:-]`, starting alphanumeric)."""
    return isinstance(kek_id, str) and _KEK_ID_RE.fullmatch(kek_id) is not None


def generate_kek_id(*, now: dt.datetime | None = None) -> str:
    """A fresh id like `kek-2026-11-25-ab12`: the date says how old a key is at a glance, the random
    suffix keeps two keys made on the same day apart."""
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    return f"kek-{day}-{secrets.token_hex(2)}"


def _utc_now_text() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KeyEncryptionKey:
    """One KEK: an id (stored in file headers) and 32 secret bytes (kept out of `repr`)."""

    id: str
    key: bytes = field(repr=False)
    created: str | None = None

    def __post_init__(self) -> None:
        if not is_valid_kek_id(self.id):
            raise KeyringError(
                "invalid KEK id: use 1-64 characters of [A-Za-z0-9._:-], starting alphanumeric"
            )
        if not isinstance(self.key, bytes) or len(self.key) != KEK_SIZE:
            raise KeyringError(f"KEK {self.id!r} must be exactly {KEK_SIZE} bytes (AES-256)")

    @classmethod
    def generate(cls, kek_id: str | None = None) -> KeyEncryptionKey:
        """A new random KEK from the OS CSPRNG."""
        return cls(id=kek_id or generate_kek_id(), key=secrets.token_bytes(KEK_SIZE), created=_utc_now_text())


class Keyring:
    """An immutable set of KEKs by id, one of them current (used to wrap new data keys)."""

    __slots__ = ("_current_id", "_keys")

    def __init__(self, keys: Iterable[KeyEncryptionKey], *, current_id: str) -> None:
        by_id: dict[str, KeyEncryptionKey] = {}
        for kek in keys:
            if not isinstance(kek, KeyEncryptionKey):
                raise TypeError("Keyring takes KeyEncryptionKey objects")
            if kek.id in by_id:
                raise KeyringError(f"duplicate KEK id {kek.id!r} in keyring")
            by_id[kek.id] = kek
        if current_id not in by_id:
            raise KeyringError("the current KEK id is not among the keyring's keys")
        self._keys = by_id
        self._current_id = current_id

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
        return f"Keyring(ids={list(self._keys)!r}, current_id={self._current_id!r})"

    # -- changing (returns new keyrings) --------------------------------------------------------

    @classmethod
    def generate(cls, kek_id: str | None = None) -> Keyring:
        """A keyring with one fresh KEK, current."""
        kek = KeyEncryptionKey.generate(kek_id)
        return cls([kek], current_id=kek.id)

    def rotated(self, new_key: KeyEncryptionKey | None = None) -> Keyring:
        """This keyring plus a new KEK that becomes current. Old KEKs stay, so old files stay readable."""
        kek = new_key or KeyEncryptionKey.generate()
        return Keyring([*self._keys.values(), kek], current_id=kek.id)

    def without(self, kek_id: str) -> Keyring:
        """This keyring minus a retired KEK. Files still wrapped under it become unreadable
        (`UnknownKeyError`), so re-wrap them first. The current KEK cannot be removed."""
        self.get(kek_id)
        if kek_id == self._current_id:
            raise KeyringError(f"cannot remove the current KEK {kek_id!r}; rotate first")
        return Keyring([k for k in self._keys.values() if k.id != kek_id], current_id=self._current_id)

    # -- serialisation --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The keyring as JSON text. Contains secret key bytes: write it only to protected places."""
        return json.dumps(
            {
                "format": _FORMAT_NAME,
                "version": _FORMAT_VERSION,
                "current": self._current_id,
                "keys": [
                    {"id": k.id, "key": base64.b64encode(k.key).decode("ascii"), "created": k.created}
                    for k in self._keys.values()
                ],
            },
            indent=2,
        )

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
        if doc.get("format") != _FORMAT_NAME or doc.get("version") != _FORMAT_VERSION:
            raise KeyringError(
                f'keyring must have "format": "{_FORMAT_NAME}" and "version": {_FORMAT_VERSION}'
            )
        current = doc.get("current")
        entries = doc.get("keys")
        if not isinstance(current, str) or not isinstance(entries, list) or not entries:
            raise KeyringError('keyring needs a string "current" and a non-empty "keys" list')
        keys = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
                raise KeyringError(f'keyring entry #{index} needs a string "id"')
            kek_id = entry["id"]
            if not is_valid_kek_id(kek_id):
                raise KeyringError(f"keyring entry #{index} has an invalid id")
            raw = entry.get("key")
            try:
                key = base64.b64decode(raw if isinstance(raw, str) else "!", validate=True)
            except (ValueError, binascii.Error):
                raise KeyringError(f'KEK {kek_id!r}: "key" must be standard base64') from None
            created = entry.get("created")
            keys.append(
                KeyEncryptionKey(id=kek_id, key=key, created=created if isinstance(created, str) else None)
            )
        return cls(keys, current_id=current)

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


def _write_private_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        # O_EXCL: never clobber an existing keyring (losing a KEK loses every file wrapped under it).
        # Mode 0600 is given at creation, so the key is never readable by others, not even briefly.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            raise KeyringError(
                f"keyring file {str(path)!r} already exists; refusing to overwrite it"
            ) from None
        tmp_name = None
    else:
        # Write a 0600 temporary file and rename it over the old one: a crash leaves either keyring whole.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)  # in case of an unusual umask or platform
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
    """Create a local keyring file (mode 0600) with one fresh current KEK, for development and tests.

    The key sits next to the data it protects, so this gives no protection against someone who can
    read the disk: production keyrings come from a secret store (see `Keyring.from_env`). Callers
    should say so when they use it.
    """
    keyring = Keyring.generate()
    keyring.save(path, overwrite=overwrite)
    return keyring
