"""Hostile bytes, sans-IO: fuzzing the frame decoder, the privval codec, the handshake and the
request handler (hypothesis; the `slow` variants run many more examples).

Any bytes fed to the frame decoder, the privval codec or the handshake machine either work
or raise ProtocolError, nothing else. Any request that decodes, with every integer field
across its whole wire range, gets a response from the handler (never an exception) and
leaves a state file the KMS can start from again. The real process against a hostile node
is in test_fault_hostile.py.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from kms.chain.local import LocalStore
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker
from kms.errors import ProtocolError
from kms.handler import RequestHandler
from kms.protocol.codec import decode_request, encode_request
from kms.protocol.delimited import FrameDecoder
from kms.protocol.messages import (
    BlockId,
    PartSetHeader,
    Proposal,
    Request,
    Response,
    SignedVoteResponse,
    SignProposalRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
)
from kms.protocol.version import ProtocolVersion
from kms.transport.handshake import encode_ephemeral_message
from kms.transport.secret_connection import SecretConnection
from providers.softsign import Ed25519SoftSigner

CHAIN = "fuzz-1"
VERSIONS = list(ProtocolVersion)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
FUZZ_LONG = settings(FUZZ, max_examples=1500)

# ---------------------------------------------------------------- sans-IO fuzzing


def feed_frames(data: bytes, cuts: list[int]) -> int:
    """Feed ``data`` cut at ``cuts``; return messages seen. Only ProtocolError may escape."""
    decoder = FrameDecoder()
    seen = 0
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for piece in pieces:
            decoder.feed(piece)
            while decoder.next_message() is not None:
                seen += 1
    except ProtocolError:
        with pytest.raises(ProtocolError):  # broken for good
            decoder.next_message()
    return seen


frame_inputs = st.binary(max_size=3000).flatmap(
    lambda data: st.tuples(
        st.just(data), st.lists(st.integers(0, len(data)), max_size=8).map(sorted)
    )
)


@FUZZ
@given(frame_inputs)
def test_frame_decoder_takes_any_bytes(case: tuple[bytes, list[int]]) -> None:
    feed_frames(*case)


@pytest.mark.slow
@FUZZ_LONG
@given(frame_inputs)
def test_frame_decoder_takes_any_bytes_long(case: tuple[bytes, list[int]]) -> None:
    feed_frames(*case)


def decode_any(data: bytes) -> list[Request]:
    decoded = []
    for version in VERSIONS:
        with contextlib.suppress(ProtocolError):
            decoded.append(decode_request(data, version))
    return decoded


@FUZZ
@given(st.binary(max_size=600))
def test_privval_decoder_takes_any_bytes(data: bytes) -> None:
    decode_any(data)


def handshake_any(chunks: list[bytes]) -> None:
    machine = SecretConnection(SigningKey(bytes(32)))
    try:
        for chunk in chunks:
            machine.receive_data(chunk)
    except ProtocolError:  # HandshakeError is one
        assert not machine.handshake_complete
        with pytest.raises(ProtocolError):
            machine.receive_data(b"more")


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_handshake_takes_any_bytes(chunks: list[bytes]) -> None:
    handshake_any(chunks)


@FUZZ
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=2000))
def test_handshake_after_a_well_formed_key_takes_any_bytes(point: bytes, rest: bytes) -> None:
    handshake_any([encode_ephemeral_message(point), rest])


# Requests no honest node sends: every integer field across its whole wire range.
int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1)
small = st.integers(-3, 6)
hostile_block_ids = st.one_of(
    st.just(BlockId()),
    st.builds(
        BlockId,
        hash=st.binary(max_size=40),
        part_set_header=st.builds(
            PartSetHeader, total=st.integers(0, 2**32 - 1), hash=st.binary(max_size=40)
        ),
    ),
)
timestamps = st.builds(Timestamp, seconds=st.integers(0, 2**34), nanos=st.integers(0, 999_999_999))
vote_types = st.sampled_from([0, 1, 2, 32, 3, 99, -1])
chain_ids = st.sampled_from([CHAIN, CHAIN, "", "other-chain"])
hostile_votes = st.builds(
    Vote,
    type=vote_types,
    height=st.one_of(small, int64s),
    round=st.one_of(small, int32s),
    block_id=hostile_block_ids,
    timestamp=timestamps,
    validator_address=st.binary(max_size=20),
    validator_index=int32s,
    extension=st.binary(max_size=10),
)
hostile_requests = st.one_of(
    st.builds(SignVoteRequest, vote=hostile_votes, chain_id=chain_ids),
    st.builds(
        SignProposalRequest,
        proposal=st.builds(
            Proposal,
            type=vote_types,
            height=st.one_of(small, int64s),
            round=st.one_of(small, int32s),
            pol_round=st.one_of(small, int32s),
            block_id=hostile_block_ids,
            timestamp=timestamps,
        ),
        chain_id=chain_ids,
    ),
)


async def answer_all(requests: list[Request], folder: Path) -> list[Response]:
    """A real handler (real tracker, state file, key) answers each request in turn."""
    signer = Ed25519SoftSigner(SigningKey(bytes(range(32))))
    store = StateFile(folder / "state.json")
    tracker = await ChainTracker.load(CHAIN, LocalStore(store), signer)
    handler = RequestHandler(
        chain_id=CHAIN,
        version=ProtocolVersion.V0_38,
        tracker=tracker,
        signer=signer,
        sign_extensions=True,
        peer="hostile",
    )
    return [(await handler.answer(request)).response for request in requests]


def handle_hostile(requests: list[Request]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hostile-", dir=_fast_tmp()))
    try:
        wire = []
        for request in requests:
            try:
                data = encode_request(request, ProtocolVersion.V0_38)
            except (ProtocolError, ValueError, OverflowError):
                continue  # not even encodable; the decoder fuzz covers raw bytes
            wire.append(decode_request(data, ProtocolVersion.V0_38))
        responses = trio.run(answer_all, wire, folder)
        assert len(responses) == len(wire)
        for response in responses:
            if isinstance(response, SignedVoteResponse) and response.vote is not None:
                assert response.vote.height >= 0 and response.vote.round >= 0
        # whatever was signed, the KMS can start again from what it wrote
        StateFile(folder / "state.json").load()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@FUZZ
@given(st.lists(hostile_requests, min_size=1, max_size=6))
def test_handler_answers_any_request_and_keeps_a_usable_state_file(
    requests: list[Request],
) -> None:
    handle_hostile(requests)


@pytest.mark.slow
@FUZZ_LONG
@given(st.lists(hostile_requests, min_size=1, max_size=10))
def test_handler_answers_any_request_long(requests: list[Request]) -> None:
    handle_hostile(requests)


def test_negative_round_is_refused_and_the_state_file_stays_usable(tmp_path: Path) -> None:
    """Found by the fuzzer: a vote at round -1 was signed and its state bricked the restart."""
    vote = Vote(1, 5, -1, BlockId(), Timestamp(1, 0), b"", 0)
    request: Request = SignVoteRequest(vote=vote, chain_id=CHAIN)
    responses = trio.run(answer_all, [request], tmp_path)
    assert isinstance(responses[0], SignedVoteResponse)
    assert responses[0].vote is None and responses[0].error is not None
    assert StateFile(tmp_path / "state.json").load().hrs == (0, 0, 0)


def test_vote_with_the_proposal_type_is_refused(tmp_path: Path) -> None:
    """Found by the fuzzer: a vote typed PROPOSAL raised ValueError out of the handler."""
    vote = Vote(32, 5, 0, BlockId(), Timestamp(1, 0), b"", 0)
    request: Request = SignVoteRequest(vote=vote, chain_id=CHAIN)
    responses = trio.run(answer_all, [request], tmp_path)
    assert isinstance(responses[0], SignedVoteResponse)
    assert responses[0].vote is None and responses[0].error is not None


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None
