"""Per-request codec cost of the privval hot path, next to betterproto and a floor.

Run from the repository root: ``python benchmarks/bench_protocol.py [--quick]`` (or
``python -m benchmarks.bench_protocol``). For each case it prints the median time of one
request's codec work (Ed25519 signing excluded) and its ratio to a floor measured in the
same run:

- vote: decode a framed-out v0.38 SignVoteRequest (non-nil precommit with an extension),
  vote_sign_bytes + vote_extension_sign_bytes, fill in both signatures, encode the
  SignedVoteResponse;
- proposal: the same for a SignProposalRequest;
- the same two with the betterproto classes (parse, Canonical* bytes, serialize);
- framing: FrameDecoder.feed + next_message of the request, frame() of the response;
- floor: the least per-field work a pure-Python codec does: slice the request into
  8-byte pieces (about one per field) and join them back together.

Budget: decode + sign bytes + encode <= 50 us per request on the 2-core test machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import betterproto
from nacl.signing import SigningKey

from kms.proto.gen.tendermint import privval as pv
from kms.proto.gen.tendermint import types as bp_types
from kms.protocol.codec import decode_request, encode_request, encode_response
from kms.protocol.delimited import FrameDecoder, frame
from kms.protocol.messages import (
    BlockId,
    PartSetHeader,
    Proposal,
    SignedProposalResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
)
from kms.protocol.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from kms.protocol.varint import encode_uvarint
from kms.protocol.version import ProtocolVersion

BUDGET_US = 50.0
VERSION = ProtocolVersion.V0_38
CHAIN_ID = "cosmoshub-4"
SIGNATURE = bytes(range(64))
BLOCK = BlockId(bytes(range(32)), PartSetHeader(2, bytes(range(32, 64))))
# Whole microseconds, so betterproto (datetime, microsecond precision) gives the same bytes.
NOW = Timestamp(1_767_225_600, 123_456_000)

VOTE_REQUEST = encode_request(
    SignVoteRequest(
        Vote(2, 24_000_123, 0, BLOCK, NOW, bytes(range(20)), 17, extension=b"vote extension"),
        CHAIN_ID,
    ),
    VERSION,
)
PROPOSAL_REQUEST = encode_request(
    SignProposalRequest(Proposal(32, 24_000_123, 0, -1, BLOCK, NOW), CHAIN_ID), VERSION
)


def median_seconds(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean time of one call in a run of ``number``."""
    fn()  # warm up
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(run / number for run in runs)


def vote_hot_path() -> bytes:
    """What the signer does per vote request, minus the Ed25519 signatures."""
    req = decode_request(VOTE_REQUEST, VERSION)
    assert isinstance(req, SignVoteRequest)
    vote = req.vote
    vote_sign_bytes(req.chain_id, vote)
    vote_extension_sign_bytes(req.chain_id, vote)
    vote.signature = SIGNATURE
    vote.extension_signature = SIGNATURE
    return encode_response(SignedVoteResponse(vote), VERSION)


def proposal_hot_path() -> bytes:
    """What the signer does per proposal request, minus the Ed25519 signature."""
    req = decode_request(PROPOSAL_REQUEST, VERSION)
    assert isinstance(req, SignProposalRequest)
    proposal = req.proposal
    proposal_sign_bytes(req.chain_id, proposal)
    proposal.signature = SIGNATURE
    return encode_response(SignedProposalResponse(proposal), VERSION)


def _delimited(message: betterproto.Message) -> bytes:
    body = bytes(message)
    return encode_uvarint(len(body)) + body


def _canonical_block_id(block_id: bp_types.BlockId) -> bp_types.CanonicalBlockId:
    header = block_id.part_set_header
    return bp_types.CanonicalBlockId(
        hash=block_id.hash,
        part_set_header=bp_types.CanonicalPartSetHeader(total=header.total, hash=header.hash),
    )


def vote_betterproto() -> bytes:
    """The vote hot path written with the generated betterproto classes."""
    req = pv.Message().parse(VOTE_REQUEST).sign_vote_request
    vote = req.vote
    _delimited(
        bp_types.CanonicalVote(
            type=vote.type,
            height=vote.height,
            round=vote.round,
            block_id=_canonical_block_id(vote.block_id),
            timestamp=vote.timestamp,
            chain_id=req.chain_id,
        )
    )
    _delimited(
        bp_types.CanonicalVoteExtension(
            extension=vote.extension, height=vote.height, round=vote.round, chain_id=req.chain_id
        )
    )
    vote.signature = SIGNATURE
    vote.extension_signature = SIGNATURE
    return bytes(pv.Message(signed_vote_response=pv.SignedVoteResponse(vote=vote)))


def proposal_betterproto() -> bytes:
    """The proposal hot path written with the generated betterproto classes."""
    req = pv.Message().parse(PROPOSAL_REQUEST).sign_proposal_request
    proposal = req.proposal
    _delimited(
        bp_types.CanonicalProposal(
            type=bp_types.SignedMsgType.PROPOSAL,
            height=proposal.height,
            round=proposal.round,
            pol_round=proposal.pol_round,
            block_id=_canonical_block_id(proposal.block_id),
            timestamp=proposal.timestamp,
            chain_id=req.chain_id,
        )
    )
    proposal.signature = SIGNATURE
    return bytes(pv.Message(signed_proposal_response=pv.SignedProposalResponse(proposal=proposal)))


def framing() -> bytes | None:
    """Split one framed request off the stream and frame one reply."""
    decoder = FrameDecoder()
    decoder.feed(FRAMED_VOTE_REQUEST)
    message = decoder.next_message()
    frame(VOTE_RESPONSE)
    return message


PIECE = 8  # bytes per slice in the floor: about one slice per field of the request
FRAMED_VOTE_REQUEST = frame(VOTE_REQUEST)
VOTE_RESPONSE = vote_hot_path()


def floor() -> bytes:
    """Slice the request into 8-byte pieces and join them: about one slice per field, the
    least per-field work a pure-Python codec can do."""
    data = VOTE_REQUEST
    return b"".join([data[i : i + PIECE] for i in range(0, len(data), PIECE)])


def main(argv: list[str] | None = None) -> int:
    """Measure every case and print a table of medians and ratios to the floor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a few seconds)")
    args = parser.parse_args(argv)
    number, repeat = (500, 5) if args.quick else (5000, 15)

    assert vote_betterproto() == VOTE_RESPONSE, "betterproto and the hand codec disagree"
    assert proposal_betterproto() == proposal_hot_path()

    key = SigningKey(bytes(32))
    cases: list[tuple[str, Callable[[], object]]] = [
        ("floor (8-byte slices of the request, joined)", floor),
        ("vote: decode+sign bytes+encode (hand)", vote_hot_path),
        ("proposal: decode+sign bytes+encode (hand)", proposal_hot_path),
        ("framing: split request + frame reply", framing),
        ("vote: same with betterproto", vote_betterproto),
        ("proposal: same with betterproto", proposal_betterproto),
        ("(context) one Ed25519 signature, PyNaCl", lambda: key.sign(VOTE_RESPONSE)),
    ]
    results = {name: median_seconds(fn, number, repeat) * 1e6 for name, fn in cases}
    floor_us = results[cases[0][0]]
    print(
        f"request: {len(VOTE_REQUEST)}-byte v0.38 SignVoteRequest, "
        f"{len(PROPOSAL_REQUEST)}-byte SignProposalRequest; median of {repeat} runs x {number}"
    )
    print(f"{'case':<44} {'median us':>10} {'x floor':>8}")
    for name, us in results.items():
        print(f"{name:<44} {us:>10.2f} {us / floor_us:>8.1f}")
    worst = max(results[cases[1][0]], results[cases[2][0]])
    verdict = "within" if worst <= BUDGET_US else "OVER"
    print(f"hand codec worst case {worst:.2f} us: {verdict} the {BUDGET_US:.0f} us budget")
    speedup = results[cases[4][0]] / results[cases[1][0]]
    print(f"betterproto / hand codec (vote): {speedup:.1f}x")
    return 0 if worst <= BUDGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
