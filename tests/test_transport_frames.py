"""Frame sealing/opening, checked against PyNaCl's independent ChaCha20-Poly1305."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_decrypt

from kms.errors import ProtocolError
from kms.transport.frames import (
    DATA_MAX,
    MAX_COUNTER,
    SEALED_FRAME_SIZE,
    FrameOpener,
    FrameSealer,
    nonce_for,
)

KEY = bytes(range(32))


@given(data=st.binary(max_size=DATA_MAX), counter=st.integers(0, MAX_COUNTER))
def test_seal_matches_an_independent_aead_and_layout(data: bytes, counter: int) -> None:
    sealed = FrameSealer(KEY, counter).seal(data)
    assert len(sealed) == SEALED_FRAME_SIZE
    frame = crypto_aead_chacha20poly1305_ietf_decrypt(sealed, None, nonce_for(counter), KEY)
    assert frame[:4] == len(data).to_bytes(4, "little")
    assert frame[4 : 4 + len(data)] == data
    assert frame[4 + len(data) :] == bytes(DATA_MAX - len(data))
    assert FrameOpener(KEY, counter).open(sealed) == data


def test_nonce_layout() -> None:
    assert nonce_for(0) == bytes(12)
    assert nonce_for(0x0102) == bytes.fromhex("000000000201000000000000")
    assert nonce_for(MAX_COUNTER) == bytes(4) + b"\xff" * 8
    with pytest.raises(ValueError):
        nonce_for(MAX_COUNTER + 1)
    with pytest.raises(ValueError):
        nonce_for(-1)


@pytest.mark.parametrize(("size", "frames"), [(0, 0), (1, 1), (1024, 1), (1025, 2), (4096, 4)])
def test_seal_all_cuts_into_1024_byte_chunks(size: int, frames: int) -> None:
    sealer, opener = FrameSealer(KEY), FrameOpener(KEY)
    data = bytes(i % 251 for i in range(size))
    sealed = sealer.seal_all(data)
    assert len(sealed) == frames
    assert sealer.counter == frames
    assert b"".join(opener.open(s) for s in sealed) == data


def test_frames_must_be_opened_in_order() -> None:
    sealer, opener = FrameSealer(KEY), FrameOpener(KEY)
    first, second = sealer.seal(b"1"), sealer.seal(b"2")
    with pytest.raises(ProtocolError, match="frame authentication failed"):
        opener.open(second)
    del first


def test_wrong_key_fails_authentication() -> None:
    sealed = FrameSealer(KEY).seal(b"secret")
    with pytest.raises(ProtocolError, match="frame authentication failed") as info:
        FrameOpener(bytes(32)).open(sealed)
    assert info.value.__cause__ is not None


def test_short_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="1043 bytes"):
        FrameOpener(KEY).open(bytes(1043))


def test_oversized_chunk_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        FrameSealer(KEY).seal(bytes(DATA_MAX + 1))


def test_counter_exhaustion_refuses_to_reuse_a_nonce() -> None:
    sealer = FrameSealer(KEY, MAX_COUNTER)
    opener = FrameOpener(KEY, MAX_COUNTER)
    assert opener.open(sealer.seal(b"last")) == b"last"
    with pytest.raises(ProtocolError, match="exhausted"):
        sealer.seal(b"again")
    with pytest.raises(ProtocolError, match="exhausted"):
        opener.open(bytes(SEALED_FRAME_SIZE))


def test_key_and_counter_are_validated() -> None:
    with pytest.raises(ValueError):
        FrameSealer(b"short")
    with pytest.raises(ValueError):
        FrameOpener(KEY, -1)
