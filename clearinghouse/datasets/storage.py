"""Encrypted files of dataset versions in the object store (Django's storage API).

Only worker code calls the `read_*` functions: decryption happens in memory, inside workers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, cast

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from django.core.files.storage import default_storage

from clearinghouse.core.keys import keyring
from clearinghouse.crypto.envelope import EncryptionInfo, StreamEncryptor, decrypt_stream, rewrap_stream
from clearinghouse.crypto.keyring import Keyring
from clearinghouse.crypto.seekable import SegmentReader

from . import ranged
from .uploads import open_for_write, staging_context

__all__ = ["open_for_write", "replace", "rewrap_file"]

ROW_GROUP_ROWS = 1_000_000


def data_file_name(*, organisation_id: int, dataset_id: int, number: int, claim: str = "") -> str:
    """Where a version's encrypted table is stored. Each ingestion run writes under its own claim, so a
    run that lost its claim (presumed dead, taken over) can never overwrite the file of the run that
    finished the version; the version records the name of the winner's file."""
    return f"{version_folder(organisation_id=organisation_id, dataset_id=dataset_id, number=number)}/" + (
        f"data.{claim}.parquet.enc" if claim else "data.parquet.enc"
    )


def version_folder(*, organisation_id: int, dataset_id: int, number: int) -> str:
    return f"datasets/{organisation_id}/{dataset_id}/v{number}"


def remove_data_files(folder: str, *, keep: str = "") -> int:
    """Deletes the data files in a version's folder other than `keep` (those of runs that died after
    writing); the number deleted."""
    try:
        _, names = default_storage.listdir(folder)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = f"{folder}/{name}"
        if path != keep and name.startswith("data.") and name.endswith(".parquet.enc"):
            default_storage.delete(path)
            removed += 1
    return removed


def data_context(*, organisation_id: int, dataset_id: int, number: int) -> dict[str, int | str]:
    # Binds the ciphertext to exactly this version: a copy under another dataset does not decrypt.
    return {
        "purpose": "dataset-version",
        "organisation": organisation_id,
        "dataset": dataset_id,
        "version": number,
    }


def read_staging(staging_name: str) -> bytes:
    return _decrypt(staging_name, staging_context(staging_name))


def read_data(name: str, context: dict) -> bytes:
    return _decrypt(name, context)


def read_table(name: str, context: dict, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """The stored table, or only its `columns` (those the file lacks are left out, for the caller's
    schema check to report).

    Without `columns`: decrypts in memory and reads the Parquet with Polars' own reader. (Going
    through pyarrow and `pl.from_arrow` was 7x slower on PUMS: converting the string columns
    dominated; the stored files are small and compressed, so copying their bytes once costs nothing
    that shows.)

    With `columns`: the file is read through a `SegmentReader`, which decrypts (and authenticates)
    only the segments a read touches. When the wanted columns hold no text and their chunks are under
    half the file, pyarrow reads just those chunks, one row group at a time (at most one row group is
    held twice while it turns into Polars). Otherwise Polars reads the file: it reads a file object
    whole (every segment, a plaintext copy in memory as before), but turning pyarrow's strings into
    Polars' costs 3-4x the whole load (PUMS, 10M rows: income+educ 0.6 s Polars, 2.3-2.7 s pyarrow,
    same peak RSS), while the compressed file is small beside the decoded frame.
    """
    if columns is None:
        return pl.read_parquet(io.BytesIO(read_data(name, context)))
    wanted = list(dict.fromkeys(columns))
    with (
        ranged.open_for_read(name) as src,
        SegmentReader(src, keyring=keyring(), context=context) as reader,
    ):
        parquet = pq.ParquetFile(reader)
        arrow_schema = parquet.schema_arrow
        wanted = [column for column in wanted if column in arrow_schema.names]
        has_text = any(_is_text(arrow_schema.field(column).type) for column in wanted)
        metadata = parquet.metadata
        chunk_bytes = sum(
            chunk.total_compressed_size
            for group in range(metadata.num_row_groups)
            for chunk in (metadata.row_group(group).column(i) for i in range(metadata.num_columns))
            if chunk.path_in_schema in wanted
        )
        if wanted and not has_text and chunk_bytes * 2 < reader.size:
            parts = [
                cast(pl.DataFrame, pl.from_arrow(parquet.read_row_group(group, columns=wanted)))
                for group in range(metadata.num_row_groups)
            ]
            if parts:
                return pl.concat(parts, rechunk=False)
        reader.seek(0)
        return pl.read_parquet(cast(BinaryIO, reader), columns=wanted)


def iter_row_groups(
    name: str, context: dict, columns: Iterable[str], *, dictionary: Iterable[str] = ()
) -> Iterator[pl.DataFrame]:
    """The stored table's `columns` (those the file lacks are left out, for the caller's schema
    check to report), one row group at a time, through a `SegmentReader` (only the segments of the
    wanted column chunks are decrypted, and only while their row group is read): at most one row
    group is held, for a dp worker to stage a table larger than its memory
    (`PreparedData.from_chunks`). Text columns named in `dictionary` are read dictionary-encoded
    (Polars Categorical: staged as an Enum without building a string per row); the others as
    stored. A table with
    no row groups yields one empty frame, so the columns are always known. Close the generator
    (or exhaust it) to close the file."""
    wanted = list(dict.fromkeys(columns))
    with (
        ranged.open_for_read(name) as src,
        SegmentReader(src, keyring=keyring(), context=context) as reader,
    ):
        arrow_schema = pq.read_schema(reader)
        wanted = [column for column in wanted if column in arrow_schema.names]
        encoded = [
            column
            for column in dict.fromkeys(dictionary)
            if column in wanted and _is_text(arrow_schema.field(column).type)
        ]
        reader.seek(0)
        parquet = pq.ParquetFile(reader, read_dictionary=encoded or None, pre_buffer=True)
        groups = parquet.metadata.num_row_groups
        if not groups:
            yield cast(pl.DataFrame, pl.from_arrow(parquet.schema_arrow.empty_table().select(wanted)))
        for group in range(groups):
            yield cast(pl.DataFrame, pl.from_arrow(parquet.read_row_group(group, columns=wanted)))


def _is_text(dtype: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_binary_view(dtype)
        or pa.types.is_dictionary(dtype)
    )


def _decrypt(name: str, context: dict) -> bytes:
    out = io.BytesIO()
    with default_storage.open(name, "rb") as src:
        # A Django `File` proxies the binary file it opened.
        decrypt_stream(cast(BinaryIO, src), out, keyring=keyring(), context=context)
    return out.getvalue()


def write_table(name: str, context: dict, table: pl.DataFrame) -> EncryptionInfo:
    """Writes the table as Parquet, encrypted; replaces a partial file left by a killed earlier run.

    The Parquet writer writes straight through the encryptor (each chunk it writes is sealed as it
    fills a segment), so neither the whole Parquet file nor a copy of it is held in memory; a write
    that fails deletes its partial (encrypted) file."""
    if default_storage.exists(name):
        default_storage.delete(name)
    try:
        with open_for_write(name) as target:
            encryptor = StreamEncryptor(target, keyring=keyring(), context=context)
            # LZ4: the fastest to write and to read back of the codecs tried on PUMS (zstd ~50% slower
            # each way). Row groups of a fixed size keep each column chunk bounded and separately
            # readable (`read_table` with `columns`), whatever the writer's default.
            table.write_parquet(
                cast(BinaryIO, _EncryptingWriter(encryptor)),
                compression="lz4",
                statistics=False,
                row_group_size=ROW_GROUP_ROWS,
            )
            return encryptor.finish()
    except BaseException:
        default_storage.delete(name)
        raise


class _EncryptingWriter(io.RawIOBase):
    """A write-only file whose bytes go to a `StreamEncryptor` (for writers that want a file)."""

    def __init__(self, encryptor: StreamEncryptor) -> None:
        super().__init__()
        self._encryptor = encryptor

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._encryptor.write(view)
        return view.nbytes


def rewrap_file(name: str, keyring: Keyring) -> None:
    """Re-wraps the data key of the stored encrypted file `name` under `keyring`'s current KEK. Only
    the header changes (segments are copied byte for byte) into a temporary copy that then replaces
    the file, so a crash leaves either the old header or the new one, both readable while the old key
    is kept; a failed copy is deleted, never left beside the file."""
    temporary = f"{name}.rewrap"
    try:
        with default_storage.open(name, "rb") as src, open_for_write(temporary) as dst:
            rewrap_stream(cast(BinaryIO, src), dst, keyring=keyring)  # a File proxies a binary file
    except BaseException:
        default_storage.delete(temporary)
        raise
    replace(temporary, name)


def replace(source: str, target: str) -> None:
    """Moves `source` over `target`: atomically on a local disk; copy-then-delete on object stores,
    where writing an object over another is itself atomic (S3: one PUT, or a multipart upload that
    replaces the object only when it completes), so `target` is never missing. Only a store that
    would save under another name instead of overwriting has `target` deleted first."""
    try:
        os.replace(default_storage.path(source), default_storage.path(target))
    except NotImplementedError:
        with default_storage.open(source, "rb") as data:
            if default_storage.get_available_name(target) != target:
                default_storage.delete(target)
            default_storage.save(target, data)
        default_storage.delete(source)
