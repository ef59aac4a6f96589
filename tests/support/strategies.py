"""Hypothesis strategies for typed privval messages, shared by the protocol tests.

``tests/test_protocol_strategies.py`` checks that the strategies themselves produce what
the codec calls valid.
"""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from kms.protocol.messages import (
    GO_ZERO_TIME_SECONDS,
    MAX_TIMESTAMP_SECONDS,
    PUBLIC_KEY_TYPES,
    BlockId,
    PartSetHeader,
    PingRequest,
    PingResponse,
    Proposal,
    PubKeyRequest,
    PubKeyResponse,
    PublicKey,
    RemoteSignerError,
    Request,
    Response,
    SignBytesRequest,
    SignBytesResponse,
    SignedProposalResponse,
    SignedRawBytesResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignRawBytesRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
    empty_proposal,
    empty_vote,
)
from kms.protocol.version import ProtocolVersion
from kms.protocol.wire import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, UINT32_MAX

ALL_VERSIONS = list(ProtocolVersion)

int32s = st.integers(INT32_MIN, INT32_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)
uint32s = st.integers(0, UINT32_MAX)
# Small values are the common case on the wire; mix them in so zero-omission is exercised.
small = st.integers(-2, 130)
texts = st.text(max_size=40)
blobs = st.binary(max_size=80)
hashes = st.one_of(st.just(b""), st.binary(min_size=32, max_size=32))


def timestamps(micros_only: bool = False) -> st.SearchStrategy[Timestamp]:
    """Valid protobuf timestamps; ``micros_only`` keeps nanos a multiple of 1000."""
    nanos = st.integers(0, 999_999).map(lambda us: us * 1000) if micros_only else None
    return st.builds(
        Timestamp,
        st.one_of(
            st.integers(GO_ZERO_TIME_SECONDS, MAX_TIMESTAMP_SECONDS),
            st.sampled_from([GO_ZERO_TIME_SECONDS, 0, 1, 1_700_000_000]),
        ),
        nanos if nanos is not None else st.one_of(st.just(0), st.integers(0, 999_999_999)),
    )


def block_ids(hash_strategy: st.SearchStrategy[bytes] = hashes) -> st.SearchStrategy[BlockId]:
    """Block IDs, nil ones included; hashes 0 or 32 bytes unless told otherwise."""
    header = st.builds(PartSetHeader, st.one_of(st.just(0), uint32s), hash_strategy)
    return st.one_of(st.just(BlockId()), st.builds(BlockId, hash_strategy, header))


def oracle_timestamps() -> st.SearchStrategy[Timestamp]:
    """Timestamps betterproto represents exactly: whole microseconds, and not the Unix
    epoch (which betterproto's datetime default leaves unwritten, unlike Go)."""
    return timestamps(micros_only=True).filter(lambda ts: ts != Timestamp(0, 0))


def _msg_types(oracle: bool) -> st.SearchStrategy[int]:
    """Message types; betterproto reads unknown enum values as None, so the oracle gets
    only the named ones."""
    named = st.sampled_from([0, 1, 2, 32])
    return named if oracle else st.one_of(named, int32s)


def votes(extensions: bool, oracle: bool = False) -> st.SearchStrategy[Vote]:
    """Votes; extension fields are only filled when the version carries them.

    ``oracle`` limits values to what betterproto represents exactly.
    """
    ext = blobs if extensions else st.just(b"")
    return st.builds(
        Vote,
        _msg_types(oracle),
        st.one_of(small, int64s),
        st.one_of(small, int32s),
        block_ids(),
        oracle_timestamps() if oracle else timestamps(),
        st.one_of(st.just(b""), st.binary(min_size=20, max_size=20), blobs),
        st.one_of(small, int32s),
        st.one_of(st.just(b""), st.binary(min_size=64, max_size=64)),
        ext,
        ext,
    )


def proposals(oracle: bool = False) -> st.SearchStrategy[Proposal]:
    """Proposals (any type value: the codec echoes it, sign bytes force 32)."""
    return st.builds(
        Proposal,
        _msg_types(oracle),
        st.one_of(small, int64s),
        st.one_of(small, int32s),
        st.one_of(small, int32s),
        block_ids(),
        oracle_timestamps() if oracle else timestamps(),
        st.one_of(st.just(b""), st.binary(min_size=64, max_size=64)),
    )


errors = st.one_of(st.none(), st.builds(RemoteSignerError, st.one_of(small, int32s), texts))


def public_keys(version: ProtocolVersion) -> st.SearchStrategy[PublicKey | None]:
    """Keys representable in ``version``: a known type name before v1, any name in v1."""
    if version is ProtocolVersion.V1:
        keys = st.builds(PublicKey, texts, blobs).filter(lambda k: bool(k.type or k.data))
    else:
        keys = st.builds(PublicKey, st.sampled_from(PUBLIC_KEY_TYPES), blobs)
    return st.one_of(st.none(), keys)


def requests(version: ProtocolVersion, oracle: bool = False) -> st.SearchStrategy[Request]:
    """Every request kind that exists in ``version``."""
    options: list[st.SearchStrategy[Request]] = [
        st.builds(PubKeyRequest, texts),
        st.builds(
            SignVoteRequest,
            votes(version.has_vote_extensions, oracle),
            texts,
            st.booleans() if version is ProtocolVersion.V1 else st.just(False),
        ),
        st.builds(SignProposalRequest, proposals(oracle), texts),
        st.just(PingRequest()),
    ]
    if version is ProtocolVersion.V1:
        options.append(st.builds(SignBytesRequest, blobs))
    if version is ProtocolVersion.CELESTIA:
        options.append(st.builds(SignRawBytesRequest, texts, blobs, texts))
    return st.one_of(options)


def responses(version: ProtocolVersion, oracle: bool = False) -> st.SearchStrategy[Response]:
    """Every response kind that exists in ``version``; vote/proposal may be None."""
    vote = votes(version.has_vote_extensions, oracle)
    options: list[st.SearchStrategy[Response]] = [
        st.builds(PubKeyResponse, public_keys(version), errors),
        st.builds(SignedVoteResponse, st.one_of(st.none(), vote), errors),
        st.builds(SignedProposalResponse, st.one_of(st.none(), proposals(oracle)), errors),
        st.just(PingResponse()),
    ]
    if version is ProtocolVersion.V1:
        options.append(st.builds(SignBytesResponse, blobs, errors))
    if version is ProtocolVersion.CELESTIA:
        options.append(st.builds(SignedRawBytesResponse, blobs, errors))
    return st.one_of(options)


def as_decoded(resp: Response) -> Response:
    """What decoding the encoding of ``resp`` gives: Go writes an absent vote/proposal as
    the empty one, so it comes back as that."""
    if isinstance(resp, SignedVoteResponse) and resp.vote is None:
        return attrs.evolve(resp, vote=empty_vote())
    if isinstance(resp, SignedProposalResponse) and resp.proposal is None:
        return attrs.evolve(resp, proposal=empty_proposal())
    return resp
