"""Push-style encryption (uploads arrive in chunks) gives files that decrypt like any other."""

import io
import random

import pytest

from clearinghouse.crypto import IntegrityError, Keyring, StreamEncryptor, decrypt_to_bytes, encrypt_bytes

CONTEXT = {"purpose": "test", "file": "x"}


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 129, 1000])
@pytest.mark.parametrize("chunk", [1, 7, 64, 65, 4096])
def test_chunked_writes_round_trip(size, chunk):
    keyring = Keyring.generate()
    data = random.Random(size * 31 + chunk).randbytes(size)
    out = io.BytesIO()
    encryptor = StreamEncryptor(out, keyring=keyring, context=CONTEXT, segment_size=64)
    for start in range(0, size, chunk):
        encryptor.write(data[start : start + chunk])
    info = encryptor.finish()
    assert info.plaintext_size == size and info.ciphertext_size == len(out.getvalue())
    assert info.segment_count == max(1, -(-size // 64))
    assert decrypt_to_bytes(out.getvalue(), keyring=keyring, context=CONTEXT) == data


def test_same_layout_as_encrypt_bytes():
    keyring = Keyring.generate()
    data = bytes(range(256)) * 5
    pushed = io.BytesIO()
    encryptor = StreamEncryptor(pushed, keyring=keyring, context=CONTEXT, segment_size=100)
    encryptor.write(data)
    encryptor.finish()
    pulled = encrypt_bytes(data, keyring=keyring, context=CONTEXT, segment_size=100)
    assert len(pushed.getvalue()) == len(pulled)


def test_unfinished_stream_does_not_decrypt():
    keyring = Keyring.generate()
    out = io.BytesIO()
    encryptor = StreamEncryptor(out, keyring=keyring, context=CONTEXT, segment_size=64)
    encryptor.write(b"x" * 500)  # never finished: the final segment is missing
    with pytest.raises(IntegrityError):
        decrypt_to_bytes(out.getvalue(), keyring=keyring, context=CONTEXT)
