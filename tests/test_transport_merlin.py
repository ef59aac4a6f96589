"""The in-tree Keccak/STROBE/Merlin, checked against hashlib's SHA3 and merlin-transcripts."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from merlin_transcripts import MerlinTranscript

from kms.transport.merlin import Transcript, keccak_f1600


def _sha3_256(message: bytes) -> bytes:
    """SHA3-256 as a sponge over keccak_f1600 (rate 136 bytes, domain padding 0x06..0x80)."""
    rate = 136
    padded = bytearray(message + b"\x06" + bytes(-(len(message) + 1) % rate))
    padded[-1] |= 0x80
    state = bytearray(200)
    for offset in range(0, len(padded), rate):
        for i in range(rate):
            state[i] ^= padded[offset + i]
        keccak_f1600(state)
    return bytes(state[:32])


@given(st.binary(max_size=600))
def test_permutation_gives_sha3(message: bytes) -> None:
    assert _sha3_256(message) == hashlib.sha3_256(message).digest()


_labels = st.binary(min_size=0, max_size=40)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), _labels, st.binary(max_size=500)),
        st.tuples(st.just("challenge"), _labels, st.integers(min_value=0, max_value=400)),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(label=_labels, ops=_ops)
def test_matches_merlin_transcripts_package(
    label: bytes, ops: list[tuple[str, bytes, object]]
) -> None:
    ours = Transcript(label)
    theirs = MerlinTranscript(label)
    for kind, op_label, arg in ops:
        if kind == "append":
            assert isinstance(arg, bytes)
            ours.append_message(op_label, arg)
            theirs.append_message(op_label, arg)
        else:
            assert isinstance(arg, int)
            assert ours.challenge_bytes(op_label, arg) == theirs.challenge_bytes(op_label, arg)
    assert ours.challenge_bytes(b"final", 32) == theirs.challenge_bytes(b"final", 32)


def test_distinct_inputs_give_distinct_challenges() -> None:
    one, two = Transcript(b"proto"), Transcript(b"proto")
    one.append_message(b"ab", b"c")
    two.append_message(b"a", b"bc")  # same concatenation, different framing
    assert one.challenge_bytes(b"x", 32) != two.challenge_bytes(b"x", 32)
