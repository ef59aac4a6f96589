"""Consensus traffic for the simulated node: votes and proposals height after height."""

from __future__ import annotations

import random
import time

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from kms.errors import ProtocolError
from kms.protocol.messages import (
    BlockId,
    PartSetHeader,
    Proposal,
    SignedMsgType,
    Timestamp,
    Vote,
)
from kms.protocol.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from kms.sim.node import SignerClient

NIL = BlockId()


def random_block_id(rng: random.Random) -> BlockId:
    """A block ID with random 32-byte hashes, as a node would see for a real block."""
    return BlockId(
        hash=rng.randbytes(32),
        part_set_header=PartSetHeader(total=rng.randint(1, 4), hash=rng.randbytes(32)),
    )


def now() -> Timestamp:
    """The current time with nanosecond precision, never through a float."""
    ns = time.time_ns()
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def make_vote(
    msg_type: int, height: int, round_: int, block_id: BlockId, extension: bytes = b""
) -> Vote:
    """An unsigned vote as a node sends it."""
    return Vote(
        type=msg_type,
        height=height,
        round=round_,
        block_id=block_id,
        timestamp=now(),
        validator_address=bytes(20),
        validator_index=0,
        extension=extension,
    )


def make_proposal(height: int, round_: int, block_id: BlockId) -> Proposal:
    """An unsigned proposal as a node sends it."""
    return Proposal(
        type=SignedMsgType.PROPOSAL,
        height=height,
        round=round_,
        pol_round=-1,
        block_id=block_id,
        timestamp=now(),
    )


@attrs.define
class ConsensusDriver:
    """Walks heights on one connection, checking every signature it gets back."""

    client: SignerClient
    verify_key: VerifyKey
    rng: random.Random = attrs.field(factory=random.Random)
    signatures: int = 0
    propose: bool = True

    def _verify(self, message: bytes, signature: bytes, what: str) -> None:
        try:
            self.verify_key.verify(message, signature)
        except BadSignatureError as exc:
            raise ProtocolError(f"invalid {what} signature from the KMS") from exc
        self.signatures += 1

    async def height(self, height: int, round_: int = 0) -> None:
        """Propose (optionally), prevote and precommit one block at ``height``."""
        chain_id = self.client.chain_id
        block_id = random_block_id(self.rng)
        if self.propose:
            reply = await self.client.sign_proposal(make_proposal(height, round_, block_id))
            if reply.error is not None or reply.proposal is None:
                raise ProtocolError(f"proposal refused: {reply.error}")
            self._verify(
                proposal_sign_bytes(chain_id, reply.proposal), reply.proposal.signature, "proposal"
            )
        for msg_type in (SignedMsgType.PREVOTE, SignedMsgType.PRECOMMIT):
            vote = make_vote(msg_type, height, round_, block_id, extension=b"ext")
            reply_vote = await self.client.sign_vote(vote)
            if reply_vote.error is not None or reply_vote.vote is None:
                raise ProtocolError(f"vote refused: {reply_vote.error}")
            signed = reply_vote.vote
            self._verify(vote_sign_bytes(chain_id, signed), signed.signature, "vote")
            if signed.extension_signature:
                self._verify(
                    vote_extension_sign_bytes(chain_id, signed),
                    signed.extension_signature,
                    "vote extension",
                )
