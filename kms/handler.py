"""What the KMS answers to each privval request, independent of the connection it came on.

The handler turns one typed request into one typed response. Every refusal becomes a
RemoteSignerError inside the response (the node only prints it and never retries, while a
dropped connection makes it retry and miss the block), so this module never raises for a
request it can parse.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import attrs

from kms.chain.state import STEP_NAMES, BlockRef
from kms.chain.tracker import ChainTracker, Signed, SignRequest
from kms.errors import KmsError, ProtocolError, SigningRefused
from kms.ops.stats import ValidatorMetrics
from kms.protocol.messages import (
    BlockId,
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
    SignedMsgType,
    SignedProposalResponse,
    SignedRawBytesResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignRawBytesRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
)
from kms.protocol.signbytes import (
    proposal_sign_bytes,
    raw_bytes_sign_bytes,
    step_of,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from kms.protocol.varint import decode_uvarint
from kms.protocol.version import ProtocolVersion
from providers import Signer

log = logging.getLogger("kms.session")

# RemoteSignerError codes. tmkms answers double signs with 2; the rest are ours.
ERR_CHAIN_ID = 1
ERR_SIGNER = 3
ERR_REFUSED_RAW = 4


def block_ref(block_id: BlockId) -> BlockRef:
    """The double-sign tracker's view of a block ID."""
    psh = block_id.part_set_header
    return BlockRef(hash=block_id.hash, parts_total=psh.total, parts_hash=psh.hash)


def _error(code: int, exc: BaseException | str) -> RemoteSignerError:
    return RemoteSignerError(code=code, description=str(exc))


@attrs.frozen
class SignatureRecord:
    """A vote or proposal just signed: what its log line and counters need."""

    msg_type: int
    height: int
    round: int
    block_id: BlockId
    seconds: float


@attrs.frozen
class Answer:
    """The response to one request, and the signature it carries, if any.

    The session sends :attr:`response` first and then has the handler :meth:`report
    <RequestHandler.report>` the answer: logging a signature adds no latency to it.
    """

    response: Response
    signed: SignatureRecord | None = None


@attrs.define
class RequestHandler:
    """Answers the requests of one validator connection for one chain."""

    chain_id: str
    version: ProtocolVersion
    tracker: ChainTracker
    signer: Signer
    sign_extensions: bool
    peer: str
    metrics: ValidatorMetrics = attrs.field(factory=ValidatorMetrics)

    @property
    def prefix(self) -> str:
        """`[chain@addr]`, the label of every log line about this connection."""
        return f"[{self.chain_id}@{self.peer}]"

    async def answer(self, request: Request) -> Answer:
        """The answer to ``request``; refusals are RemoteSignerError replies inside it.

        A signature's log line and counters wait for :meth:`report`.
        """
        if isinstance(request, SignVoteRequest):
            return await self._sign_vote(request)
        if isinstance(request, SignProposalRequest):
            return await self._sign_proposal(request)
        if isinstance(request, PingRequest):
            return Answer(PingResponse())
        if isinstance(request, PubKeyRequest):
            return Answer(self._pub_key(request))
        if isinstance(request, SignRawBytesRequest):
            return Answer(await self._sign_raw(request))
        if isinstance(request, SignBytesRequest):
            return Answer(await self._sign_bytes(request))
        raise ProtocolError(f"unexpected message from validator: {type(request).__name__}")

    def _chain_mismatch(self, chain_id: str) -> RemoteSignerError | None:
        if chain_id == self.chain_id:
            return None
        log.error("%s request for wrong chain ID: %r", self.prefix, chain_id)
        self.metrics.refused("chain_id_mismatch")
        return _error(ERR_CHAIN_ID, f"chain ID mismatch: expected {self.chain_id}, got {chain_id}")

    def _pub_key(self, request: PubKeyRequest) -> PubKeyResponse:
        # CometBFT v0.34 nodes may send an empty chain ID in PubKeyRequest.
        if request.chain_id and (error := self._chain_mismatch(request.chain_id)):
            return PubKeyResponse(pub_key=None, error=error)
        return PubKeyResponse(
            pub_key=PublicKey(type=self.signer.key_type, data=self.signer.public_key)
        )

    def _wants_extension_signature(self, request: SignVoteRequest) -> bool:
        vote = request.vote
        return (
            self.version.has_vote_extensions
            and self.sign_extensions
            and vote.type == SignedMsgType.PRECOMMIT
            and not vote.block_id.is_nil()
            and not request.skip_extension_signing
        )

    async def _track(
        self,
        kind: Literal["vote", "proposal"],
        msg_type: int,
        msg: Vote | Proposal,
        sign_bytes: bytes,
    ) -> Signed:
        """Pass a vote or proposal through the chain's double-sign tracker to the signer."""
        return await self.tracker.sign(
            SignRequest(
                kind=kind,
                height=msg.height,
                round=msg.round,
                step=step_of(msg_type),
                block=block_ref(msg.block_id),
                sign_bytes=sign_bytes,
                timestamp=(msg.timestamp.seconds, msg.timestamp.nanos),
            ),
            peer=self.peer,
            observer=self.metrics,
        )

    async def _sign_vote(self, request: SignVoteRequest) -> Answer:
        if error := self._chain_mismatch(request.chain_id):
            return Answer(SignedVoteResponse(vote=None, error=error))
        vote: Vote = request.vote
        started = time.perf_counter()
        try:
            signed = await self._track(
                "vote", vote.type, vote, vote_sign_bytes(self.chain_id, vote)
            )
            extension_signature = b""
            if self._wants_extension_signature(request):
                extension_signature = await self.signer.sign(
                    vote_extension_sign_bytes(self.chain_id, vote)
                )
                self.metrics.signed_other("vote_extension")
        except KmsError as exc:
            return Answer(SignedVoteResponse(vote=None, error=self._refusal(exc)))
        vote.signature = signed.signature
        vote.timestamp = Timestamp(*signed.timestamp)
        vote.extension_signature = extension_signature
        elapsed = time.perf_counter() - started
        record = SignatureRecord(vote.type, vote.height, vote.round, vote.block_id, elapsed)
        return Answer(SignedVoteResponse(vote=vote), record)

    async def _sign_proposal(self, request: SignProposalRequest) -> Answer:
        if error := self._chain_mismatch(request.chain_id):
            return Answer(SignedProposalResponse(proposal=None, error=error))
        proposal: Proposal = request.proposal
        started = time.perf_counter()
        try:
            signed = await self._track(
                "proposal",
                SignedMsgType.PROPOSAL,
                proposal,
                proposal_sign_bytes(self.chain_id, proposal),
            )
        except KmsError as exc:
            return Answer(SignedProposalResponse(proposal=None, error=self._refusal(exc)))
        proposal.signature = signed.signature
        record = SignatureRecord(
            SignedMsgType.PROPOSAL,
            proposal.height,
            proposal.round,
            proposal.block_id,
            time.perf_counter() - started,
        )
        return Answer(SignedProposalResponse(proposal=proposal), record)

    async def _sign_raw(self, request: SignRawBytesRequest) -> SignedRawBytesResponse:
        if error := self._chain_mismatch(request.chain_id):
            return SignedRawBytesResponse(signature=b"", error=error)
        try:
            signature = await self.signer.sign(raw_bytes_sign_bytes(request))
        except KmsError as exc:
            return SignedRawBytesResponse(signature=b"", error=self._refusal(exc))
        log.info("%s signed raw bytes (unique ID %s)", self.prefix, request.unique_id)
        self.metrics.signed_other("raw_bytes")
        return SignedRawBytesResponse(signature=signature)

    async def _sign_bytes(self, request: SignBytesRequest) -> SignBytesResponse:
        # CometBFT v1 signs these bytes as they are, outside the double-sign state. Every
        # consensus sign-bytes value is uvarint(len) || body, so refuse anything of that shape:
        # otherwise a compromised node could obtain a conflicting vote through this door.
        if _looks_length_delimited(request.value):
            log.error("%s refused to sign raw bytes shaped like consensus sign bytes", self.prefix)
            self.metrics.refused("consensus_shaped_raw_bytes")
            return SignBytesResponse(
                signature=b"",
                error=_error(ERR_REFUSED_RAW, "refusing raw bytes shaped like consensus messages"),
            )
        try:
            signature = await self.signer.sign(request.value)
        except KmsError as exc:
            return SignBytesResponse(signature=b"", error=self._refusal(exc))
        self.metrics.signed_other("raw_bytes")
        return SignBytesResponse(signature=signature)

    def _refusal(self, exc: KmsError) -> RemoteSignerError:
        self.metrics.failed(exc)
        if isinstance(exc, SigningRefused):
            return _error(exc.code, exc)
        log.error("%s signing failed: %s", self.prefix, exc)
        return _error(ERR_SIGNER, f"signing failed: {exc}")

    def report(self, answer: Answer) -> None:
        """Log and count the signature ``answer`` carries, if any."""
        record = answer.signed
        if record is None:
            return
        step = step_of(record.msg_type)
        self.metrics.signed(step, record.height, record.round)
        log.info(
            "%s signed %s:%s at h/r/s %d/%d/%d (%d ms)",
            self.prefix,
            STEP_NAMES[step],
            block_ref(record.block_id).prefix(),
            record.height,
            record.round,
            step,
            int(record.seconds * 1000),
        )


def _looks_length_delimited(value: bytes) -> bool:
    try:
        length, pos = decode_uvarint(value)
    except ProtocolError:
        return False
    return length == len(value) - pos
