"""Throughput of the dataset encryption core (clearinghouse.crypto) against plain reads.

    .venv/bin/python benchmarks/crypto_throughput.py [--size-mb 100] [--segment-kib 1024] [--repeat 3] [--parquet]

Prints MB/s (10**6 bytes) for a plain file read, then per AES-GCM backend (OpenSSL via `cryptography`
when installed, and pycryptodome): raw segment AES-GCM (the ceiling), encrypt_stream and decrypt_stream
file -> file, decrypt_to_bytes, and with --parquet the later target: decrypt + pyarrow.parquet.read_table
versus read_table of the plain file (goal: <= 1.5x). Best of --repeat runs; files live in a temporary
directory (page cache, so disk speed is mostly out of it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearinghouse.crypto import Keyring, _aead, decrypt_stream, decrypt_to_bytes, encrypt_stream

CONTEXT = {"organisation": 1, "dataset": "benchmark", "version": 1}


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(label: str, nbytes: int, seconds: float) -> None:
    print(f"{label:44s} {nbytes / seconds / 1e6:9.1f} MB/s  ({seconds * 1000:8.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--segment-kib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--parquet", action="store_true", help="also time decrypt + Parquet load")
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    segment = args.segment_kib * 1024
    keyring = Keyring.generate()

    with tempfile.TemporaryDirectory() as tmp:
        plain, encrypted, decrypted = Path(tmp, "plain.bin"), Path(tmp, "enc.bin"), Path(tmp, "dec.bin")
        plain.write_bytes(os.urandom(size))
        print(f"{args.size_mb} MB, segment {args.segment_kib} KiB, best of {args.repeat}")

        def plain_read() -> None:
            with plain.open("rb") as f:
                while f.read(segment):
                    pass

        report("plain read (file, segment-sized chunks)", size, best_of(args.repeat, plain_read))

        data = memoryview(plain.read_bytes()[:segment])
        out = memoryview(bytearray(segment + 16))
        key = os.urandom(32)
        for backend in sorted(_aead.BACKENDS):
            _aead.backend = backend
            print(f"-- backend: {backend}")

            def raw_gcm() -> None:
                cipher = _aead.new_segment_cipher(key)
                for i in range(size // segment):
                    cipher.seal_into(i.to_bytes(12, "big"), b"ad" * 16, data, out)

            report(
                "raw segment AES-256-GCM (ceiling)", size // segment * segment, best_of(args.repeat, raw_gcm)
            )

            def encrypt() -> None:
                with plain.open("rb") as src, encrypted.open("wb") as dst:
                    encrypt_stream(src, dst, keyring=keyring, context=CONTEXT, segment_size=segment)

            def decrypt() -> None:
                with encrypted.open("rb") as src, decrypted.open("wb") as dst:
                    decrypt_stream(src, dst, keyring=keyring, context=CONTEXT)

            def decrypt_bytes() -> None:
                with encrypted.open("rb") as src:
                    decrypt_to_bytes(src, keyring=keyring, context=CONTEXT)

            report("encrypt_stream file -> file", size, best_of(args.repeat, encrypt))
            report("decrypt_stream file -> file", size, best_of(args.repeat, decrypt))
            assert decrypted.read_bytes() == plain.read_bytes()
            report("decrypt_to_bytes file -> memory", size, best_of(args.repeat, decrypt_bytes))
            if args.parquet:
                parquet_benchmark(Path(tmp), size, segment, keyring, args.repeat)


def parquet_benchmark(tmp: Path, size: int, segment: int, keyring: Keyring, repeat: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clearinghouse.crypto import decrypt_into, plaintext_size, read_header

    rows = size // 8 // 4  # four float64 columns of random values: incompressible, ~size bytes
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.random(rows) for i in range(4)})
    plain, encrypted = tmp / "t.parquet", tmp / "t.parquet.enc"
    pq.write_table(table, plain, compression="snappy")
    with plain.open("rb") as src, encrypted.open("wb") as dst:
        encrypt_stream(src, dst, keyring=keyring, context=CONTEXT, segment_size=segment)
    nbytes = plain.stat().st_size

    plain_s = best_of(repeat, lambda: pq.read_table(plain))

    def via_bytes() -> None:
        with encrypted.open("rb") as src:
            pq.read_table(pa.BufferReader(decrypt_to_bytes(src, keyring=keyring, context=CONTEXT)))

    def via_arrow_pool() -> None:
        # Decrypt straight into memory from Arrow's pool: no fresh Python allocation to page in.
        with encrypted.open("rb") as src:
            size = plaintext_size(header=read_header(src), encrypted_size=os.fstat(src.fileno()).st_size)
            src.seek(0)
            buffer = pa.allocate_buffer(size)
            decrypt_into(src, buffer, keyring=keyring, context=CONTEXT)
        pq.read_table(pa.BufferReader(buffer))

    for label, fn in (("decrypt_to_bytes", via_bytes), ("decrypt_into arrow buffer", via_arrow_pool)):
        seconds = best_of(repeat, fn)
        print(
            f"  parquet {nbytes / 1e6:.0f} MB: read_table {plain_s * 1000:.0f} ms, {label} + read_table "
            f"{seconds * 1000:.0f} ms, ratio {seconds / plain_s:.2f}x (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
