"""A content digest of a labelled text table: what lets a member check, before a private job trains,
that its local file holds the rows of the registered dataset version the ledger priced.

The digest is computed on both sides of a job from the data as *training* sees it:

- the clearinghouse, in the ingestion worker, from the registered version's stored (normalised)
  table, for each pair (text column, label column) its schema allows (see
  ``clearinghouse.datasets.ingest.content_digests``);
- the member, from its local file read by the ClientApp's own loader (``training.data``), on the
  columns its node config names (``labelled_table_digest``).

Canonical form (scheme ``DIGEST_SCHEME``), for a table of ``n`` rows, each a (text, label) pair:

1. the text is the cell's string exactly as read (no trimming, no case or Unicode normalisation);
   the label is the cell's string with surrounding whitespace removed (Polars' ``strip_chars()``,
   as the training loader compares labels); an integer label is its decimal form (``1``, ``-3``);
2. each field is encoded as the byte ``0x01``, its UTF-8 length as 8 bytes big-endian, then its
   UTF-8 bytes; a missing value (null) as the single byte ``0x00``. The row's hash is
   SHA-256(encoded text || encoded label);
3. the digest is SHA-256 over ``DIGEST_SCHEME`` as UTF-8, a 0x00 byte, ``n`` as 8 bytes
   big-endian, then the ``n`` row hashes sorted bytewise (duplicates kept), written as
   ``"sha256:"`` and 64 lower-case hexadecimal digits.

So the digest does not depend on the order of the rows (a shuffled or re-sorted file has the same
one), counts duplicates, and changes when a row is added, dropped or changed (text or label), up to
SHA-256 collisions. It covers the two training columns only: other columns of the registered table
may differ or be absent in the member's file. A row the ingestion repaired (dropped, clamped or
truncated) or dropped by a contribution limit is not in the registered table: a member training on
the unrepaired file does not match, as it would not train on the rows that were priced.

A digest is a function of the rows: it reveals nothing of them, but whoever holds a candidate file
can confirm that it is the registered one (docs/data-exposure.md). Standard library and Polars
only (no torch), so the web service and the ingestion worker import it cheaply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from training.config import TrainingConfigError

__all__ = [
    "DIGEST_SCHEME",
    "DataDigest",
    "DataExpectation",
    "content_digest",
    "digests_by_pair",
    "frame_digest",
    "is_digest",
    "labelled_table_digest",
]

DIGEST_SCHEME = "rows-sha256-v1"
_PREFIX = "sha256:"


def is_digest(value: object) -> bool:
    """Whether ``value`` is written as a digest is (``sha256:`` and 64 lower-case hex digits)."""
    if not isinstance(value, str) or not value.startswith(_PREFIX):
        return False
    hexdigits = value[len(_PREFIX) :]
    return len(hexdigits) == 64 and all(c in "0123456789abcdef" for c in hexdigits)


@dataclass(frozen=True)
class DataDigest:
    """A table's row count and content digest."""

    rows: int
    digest: str


def _field(value: str | None) -> bytes:
    if value is None:
        return b"\x00"
    data = value.encode("utf-8", errors="surrogatepass")
    return b"\x01" + len(data).to_bytes(8, "big") + data


def _row_hash(text: str | None, label: str | None) -> bytes:
    return hashlib.sha256(_field(text) + _field(label)).digest()


def content_digest(texts: Iterable[str | None], labels: Iterable[str | None]) -> DataDigest:
    """The digest of the rows ``zip(texts, labels)``, already in canonical form (labels stripped)."""
    hashes = sorted(_row_hash(text, label) for text, label in zip(texts, labels, strict=True))
    outer = hashlib.sha256(DIGEST_SCHEME.encode() + b"\x00" + len(hashes).to_bytes(8, "big"))
    for row in hashes:
        outer.update(row)
    return DataDigest(rows=len(hashes), digest=_PREFIX + outer.hexdigest())


def frame_digest(frame: pl.DataFrame, *, text_column: str, label_column: str) -> DataDigest:
    """The digest of two columns of a Polars table (the registered version's stored table): texts as
    strings, labels as stripped strings (integers in decimal)."""
    columns = frame.select(
        pl.col(text_column).cast(pl.String).alias("text"),
        pl.col(label_column).cast(pl.String).str.strip_chars().alias("label"),
    )
    return content_digest(columns.get_column("text").to_list(), columns.get_column("label").to_list())


class _Labelled(Protocol):
    """What ``training.data.LabelledTable`` offers (not imported here: it brings torch)."""

    @property
    def texts(self) -> tuple[str, ...]: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def label_ids(self) -> Any: ...


def labelled_table_digest(*tables: _Labelled) -> DataDigest:
    """The digest of the rows of ``tables`` together, as the training loader read them (its labels
    are already stripped): one table, or a split's two sides (the digest ignores order)."""
    texts: list[str] = []
    labels: list[str] = []
    for table in tables:
        texts.extend(table.texts)
        labels.extend(table.labels[int(i)] for i in table.label_ids)
    return content_digest(texts, labels)


@dataclass(frozen=True)
class DataExpectation:
    """The rows a member's DP-SGD plan was priced on: the registered version's row count and digest,
    over its columns ``text_column`` and ``label_column`` (the registered names; the member reads
    its own file with its node config's columns).

    The digest is of the cells as the registered upload was parsed: ``delimiter`` and ``quote_char``
    record how (a delimited upload: its delimiter, and its quote character or None for none), so that
    the member reads a delimited file the same way (``training.data.load_labelled_table``'s
    ``delimiter`` and ``quote_char``; the ClientApp's ``_registered_parse``). Both None: a Parquet upload,
    or a version digested before they were recorded (the loader's own defaults apply)."""

    rows: int
    digest: str
    text_column: str
    label_column: str
    scheme: str = DIGEST_SCHEME
    delimiter: str | None = None
    quote_char: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise TrainingConfigError(f"data.rows must be an integer ≥ 1, not {self.rows!r}")
        if not is_digest(self.digest):
            raise TrainingConfigError("data.digest must be 'sha256:' and 64 lower-case hexadecimal digits")
        for name in ("text_column", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TrainingConfigError(f"data.{name} must be a column name")
        if self.scheme != DIGEST_SCHEME:
            raise TrainingConfigError(f"data.scheme {self.scheme!r} is not {DIGEST_SCHEME!r}")
        for name in ("delimiter", "quote_char"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) != 1):
                raise TrainingConfigError(f"data.{name} must be one character or null, not {value!r}")
        if self.delimiter is None and self.quote_char is not None:
            raise TrainingConfigError("data.quote_char needs data.delimiter (a delimited upload)")

    @classmethod
    def coerce(cls, value: DataExpectation | Mapping[str, Any]) -> DataExpectation:
        """From a plan's JSON (a mapping), or as is."""
        if isinstance(value, DataExpectation):
            return value
        if not isinstance(value, Mapping):
            raise TrainingConfigError(
                "data must be an object {rows, digest, text_column, label_column[, delimiter, quote_char]}"
            )
        known = {"rows", "digest", "text_column", "label_column", "scheme", "delimiter", "quote_char"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TrainingConfigError(f"data has unknown keys {unknown}")
        return cls(**value)

    def matches(self, local: DataDigest) -> bool:
        return local.rows == self.rows and local.digest == self.digest


def digests_by_pair(pairs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """A version's stored ``pairs`` as (text column, label column) -> digest."""
    return {(str(p["text_column"]), str(p["label_column"])): str(p["digest"]) for p in pairs}
