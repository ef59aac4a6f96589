"""Per-chain double-sign tracker: check -> persist -> sign, under one lock.

Every validator connection of a chain shares one ChainTracker. ``sign`` takes the chain's
trio.Lock, asks the pure rule (``kms.chain.state.check``) whether the request may be
signed, makes the new state durable through its :class:`kms.chain.durable.StateStore`
(shielded from cancellation so a cancelled request can never leave memory and the store
disagreeing), and only then asks the key to sign. The ordering is the whole point:

* the signature is produced after the state covering it is on disk, so a crash or SIGKILL
  at any instant leaves a state file at or beyond every signature that left the process;
* a failed write raises before the key is touched: no signature, old state kept;
* a failed signature after a good write leaves the state advanced with nothing signed,
  which is merely conservative.

CometBFT's file signer refinement is kept for votes: the same vote (same height, round,
step and block, sign bytes differing at most in the timestamp) asked again returns the
earlier signature and timestamp instead of signing a second, different vote. The cache is
memory only, so the state file stays tmkms's format.
"""

from __future__ import annotations

import logging
import time
from typing import Literal, Protocol

import attrs
import trio

from kms.chain.durable import StateStore
from kms.chain.state import (
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    STEP_PROPOSAL,
    BlockRef,
    Refusal,
    SignState,
    check,
    describe_refusal,
)
from kms.errors import DoubleSignError, SigningRefused, StateError
from providers import Signer

__all__ = [
    "ChainTracker",
    "DoubleSignRefused",
    "InvalidSignRequest",
    "MaxHeightRefused",
    "SignObserver",
    "SignRequest",
    "Signed",
]

log = logging.getLogger("kms.chain")


class InvalidSignRequest(SigningRefused, ValueError):
    """A request no honest node sends: a vote at the proposal step, a negative height or round.

    A ValueError to whoever builds the request, and a SigningRefused to the handler, which
    answers it with a RemoteSignerError instead of dropping the connection. A negative
    round must never reach the state file: tmkms's format (and our reader) has no sign.
    """


def _check_step(instance: SignRequest, attribute: attrs.Attribute[int], step: int) -> None:
    allowed = (STEP_PROPOSAL,) if instance.kind == "proposal" else (STEP_PREVOTE, STEP_PRECOMMIT)
    if step not in allowed:
        raise InvalidSignRequest(f"a {instance.kind} cannot be at step {step}")


def _non_negative(instance: SignRequest, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise InvalidSignRequest(f"refusing to sign at a negative {attribute.name}: {value}")


@attrs.frozen
class SignRequest:
    """What the session asks the tracker to sign, reduced to what the rule needs."""

    kind: Literal["vote", "proposal"] = attrs.field(
        validator=attrs.validators.in_(("vote", "proposal"))
    )
    height: int = attrs.field(validator=_non_negative)
    round: int = attrs.field(validator=_non_negative)
    step: int = attrs.field(validator=_check_step)
    block: BlockRef
    sign_bytes: bytes
    timestamp: tuple[int, int]

    @property
    def state(self) -> SignState:
        """The state this request would leave behind once signed."""
        return SignState(self.height, self.round, self.step, self.block)


@attrs.frozen
class Signed:
    """A signature and the timestamp the signed message carries."""

    signature: bytes
    timestamp: tuple[int, int]


class DoubleSignRefused(DoubleSignError):
    """The double-sign rule refused a request (code 2, tmkms's description)."""

    def __init__(self, description: str, refusal: Refusal, detail: str) -> None:
        super().__init__(description)
        self.refusal = refusal
        self.reason = refusal.name.lower()
        self.detail = detail


class MaxHeightRefused(SigningRefused):
    """The request is above the validator's configured ``max_height``."""

    refusal = Refusal.MAX_HEIGHT
    reason = "max_height"


class SignObserver(Protocol):
    """Hears where each signature's time went (kms.ops.stats.ValidatorMetrics is one)."""

    def observe_sign(self, queue: float, state_write: float, signer: float) -> None:
        """Seconds waiting for the chain's lock, making the state durable, and signing."""
        ...


class ChainTracker:
    """The last signed state of one chain, and the only way to sign for it."""

    def __init__(
        self, chain_id: str, store: StateStore, signer: Signer, *, max_height: int | None = None
    ) -> None:
        self._chain_id = chain_id
        self._store = store
        self._signer = signer
        self._max_height = max_height
        self._lock = trio.Lock()
        self._state: SignState | None = None
        self._last_vote: tuple[SignState, Signed] | None = None

    @classmethod
    async def load(
        cls, chain_id: str, store: StateStore, signer: Signer, *, max_height: int | None = None
    ) -> ChainTracker:
        """Build a tracker and read its state; StateError if the store is unusable."""
        tracker = cls(chain_id, store, signer, max_height=max_height)
        await tracker.open()
        return tracker

    async def open(self) -> None:
        """Read (or create at height 0) the chain's state from its store."""
        async with self._lock:
            self._state = await self._store.load()
            self._last_vote = None

    @property
    def chain_id(self) -> str:
        """The chain this tracker guards."""
        return self._chain_id

    @property
    def signer(self) -> Signer:
        """The chain's consensus key (vote extensions are signed with it directly)."""
        return self._signer

    @property
    def max_height(self) -> int | None:
        """The highest height this tracker will sign at, if limited."""
        return self._max_height

    @property
    def store(self) -> StateStore:
        """Where the chain's state is kept durably."""
        return self._store

    @property
    def hrs(self) -> tuple[int, int, int]:
        """Height, round and step of :attr:`state` (what the metrics show)."""
        return self.state.hrs

    @property
    def state(self) -> SignState:
        """The last signed (or hook-raised) state; StateError before ``open``."""
        if self._state is None:
            raise StateError(f"state of chain {self._chain_id} was not loaded")
        return self._state

    async def sign(
        self, req: SignRequest, *, peer: str | None = None, observer: SignObserver | None = None
    ) -> Signed:
        """Check, persist, then sign ``req``.

        Raises DoubleSignRefused (a DoubleSignError, code 2) or MaxHeightRefused (a
        SigningRefused) when the request must not be signed, StateError when the new state
        cannot be made durable (nothing signed, old state kept), and the signer's
        SignerError when signing fails after the state was saved. ``peer`` only labels the
        log lines (``[chain@peer]``); ``observer``, if given, hears the time spent waiting
        for the lock, making the state durable and signing. The store may refuse too (a
        shared watermark already past this step): its SigningRefused passes through.
        """
        new = req.state
        queued = time.perf_counter()
        async with self._lock:
            locked = time.perf_counter()
            last = self.state
            refusal = check(last, new, self._max_height)
            if refusal is not None:
                raise self._refuse(refusal, last, req, peer)
            if new != last:
                await self._persist(new)
                # a request cancelled while its state was saving gets no signature: its
                # reply could not be sent anyway (the state stays advanced, which is safe)
                await trio.lowlevel.checkpoint_if_cancelled()
            elif req.kind == "vote" and self._last_vote is not None:
                cached_state, cached = self._last_vote
                if cached_state == new:
                    return cached
            written = time.perf_counter()
            signature = await self._signer.sign(req.sign_bytes)
            if observer is not None:
                done = time.perf_counter()
                observer.observe_sign(locked - queued, written - locked, done - written)
            signed = Signed(signature, req.timestamp)
            self._last_vote = (new, signed) if req.kind == "vote" else None
            return signed

    async def raise_to_height(self, height: int) -> bool:
        """Move the state to ``height``/0/0 (nil) if that is higher; never lowers it.

        Used by the state hook. The new state is durable before this returns. Returns
        whether the state changed.
        """
        if height < 0:
            raise ValueError(f"height must be non-negative, got {height}")
        async with self._lock:
            if height <= self.state.height:
                return False
            await self._persist(SignState(height, 0, STEP_PROPOSAL, BlockRef.NIL))
            self._last_vote = None
            return True

    async def _persist(self, new: SignState) -> None:
        """Save ``new`` durably, then adopt it; shielded so cancellation cannot split them."""
        with trio.CancelScope(shield=True):
            await self._store.save(new)
            # no checkpoint between the save returning and memory following the disk
            self._state = new

    def _refuse(
        self, refusal: Refusal, last: SignState, req: SignRequest, peer: str | None
    ) -> SigningRefused:
        new = req.state
        label = f"[{self._chain_id}@{peer}]" if peer else f"[{self._chain_id}]"
        detail = describe_refusal(refusal, last, new, self._max_height)
        if refusal is Refusal.MAX_HEIGHT:
            log.error("%s %s", label, detail)
            return MaxHeightRefused(detail)
        why = f"{last.block} != {new.block}" if refusal is Refusal.DOUBLE_SIGN else detail
        log.error("%s attempted double sign %s at h/r/s: %s (%s)", label, new.type_name, new, why)
        return DoubleSignRefused(
            f"double signing requested at height: {new.height}", refusal, detail
        )
