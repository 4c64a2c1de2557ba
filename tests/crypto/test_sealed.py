"""Messages sealed to a one-off X25519 key: only that key opens them, only in their context, and any
change to the sealed bytes is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearinghouse.crypto.errors import IntegrityError
from clearinghouse.crypto.sealed import OneOffRecipient, seal


@settings(max_examples=30, deadline=None)
@given(message=st.binary(max_size=2000), context=st.binary(min_size=1, max_size=40))
def test_the_recipient_opens_what_was_sealed_to_it(message, context):
    recipient = OneOffRecipient()
    sealed = seal(recipient.public, message, context=context)
    assert recipient.open(sealed, context=context) == message
    assert len(message) < 16 or message not in sealed  # (a short one may occur in random bytes by chance)


def test_another_key_another_context_or_a_flipped_bit_is_refused():
    recipient, other = OneOffRecipient(), OneOffRecipient()
    sealed = seal(recipient.public, b"the texts of a page", context=b"annotation-texts:1")
    with pytest.raises(IntegrityError):
        other.open(sealed, context=b"annotation-texts:1")
    with pytest.raises(IntegrityError):
        recipient.open(sealed, context=b"annotation-texts:2")
    for position in (0, 40, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 1
        with pytest.raises(IntegrityError):
            recipient.open(bytes(tampered), context=b"annotation-texts:1")
    with pytest.raises(IntegrityError):
        recipient.open(sealed[:20], context=b"annotation-texts:1")


def test_each_seal_is_fresh_and_a_bad_public_key_is_refused():
    recipient = OneOffRecipient()
    assert seal(recipient.public, b"x", context=b"c") != seal(recipient.public, b"x", context=b"c")
    with pytest.raises(ValueError):
        seal(b"short", b"x", context=b"c")
