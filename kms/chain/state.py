"""The double-sign rule, as a pure function over small value types.

Theory of operation
-------------------
CometBFT consensus runs in heights; each height has rounds; each round has three steps in
which a validator signs: the proposal (step 0, only the round's proposer), the prevote
(step 1) and the precommit (step 2). A validator is slashed when it signs two *different*
blocks at the same height/round/step, so the KMS keeps, per chain, the last thing it signed
(H0, R0, S0, B0) and compares every request (H, R, S, B) against it:

* Position first. (H, R, S) is compared lexicographically with (H0, R0, S0). Anything
  strictly earlier is refused: the node has gone back in time (a restarted node replaying an
  old height, a second node sharing the key, a stale connection) and whatever it asks for
  could conflict with something already signed. The reason reported is the first coordinate
  that went back: height, then round, then step.
* Anything at a later height or a later round is accepted with any block: a new round is a
  fresh vote in CometBFT, and it is the node's job (locking) to stay consistent across rounds.
* At the same height and round, with the step equal or later, the block matters:
  - the same block (including nil == nil) is always fine: signing identical content twice
    cannot produce conflicting evidence;
  - two different non-nil blocks are refused even at a later step (prevote A then
    precommit B): tmkms treats this as a double sign and so do we;
  - nil versus a block at the *same* step is refused (prevote nil and prevote A are two
    different votes for the same slot);
  - nil then a block, or a block then nil, at a *later* step is fine (prevote nil, then
    precommit for the block that gathered +2/3 prevotes; or prevote A, precommit nil).

That is exactly tmkms's table (``src/chain/state.rs``), restated in the project spec
``double-sign.md``. ``max_height`` is an operator limit checked before the table: signing at
it is allowed, above it is refused.

``check`` only decides; it never mutates. The tracker turns a refusal into a
RemoteSignerError and persists the request as the new state only when ``check`` accepts.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs

STEP_PROPOSAL = 0
STEP_PREVOTE = 1
STEP_PRECOMMIT = 2

#: The message type each step signs, as tmkms names it in its log lines.
STEP_NAMES: tuple[str, str, str] = ("Proposal", "Prevote", "Precommit")

#: Shown instead of a block hash prefix when the block ID is nil (tmkms's placeholder).
NIL_PLACEHOLDER = "<nil>"

#: Number of hex characters of the block hash shown in log lines (tmkms's PREFIX_LENGTH).
PREFIX_LENGTH = 10

MAX_HEIGHT_VALUE = (1 << 63) - 1
MAX_ROUND_VALUE = (1 << 31) - 1


@attrs.frozen
class BlockRef:
    """A block ID as far as the double-sign rule cares: hash and part-set header.

    The nil block ID (what a vote for nil carries) has an empty hash and an empty part-set
    header. Two block IDs are the same only when all three fields are equal.
    """

    hash: bytes = b""
    parts_total: int = 0
    parts_hash: bytes = b""

    NIL: ClassVar[BlockRef]

    def is_nil(self) -> bool:
        """True for the nil block ID: empty hash and an all-zero part-set header."""
        return not self.hash and self.parts_total == 0 and not self.parts_hash

    def prefix(self) -> str:
        """Short display for logs: the first 10 upper-case hex digits of the hash, or ``<nil>``."""
        if self.is_nil():
            return NIL_PLACEHOLDER
        return self.hash[: PREFIX_LENGTH // 2].hex().upper()

    def __str__(self) -> str:
        return self.prefix()


BlockRef.NIL = BlockRef()


@attrs.frozen
class SignState:
    """The position (height/round/step) and block of one signature, or of the last one."""

    height: int
    round: int
    step: int
    block: BlockRef = BlockRef.NIL

    INITIAL: ClassVar[SignState]

    @property
    def hrs(self) -> tuple[int, int, int]:
        """``(height, round, step)``, ordered the way consensus advances."""
        return (self.height, self.round, self.step)

    @property
    def type_name(self) -> str:
        """``Proposal``, ``Prevote`` or ``Precommit`` for the step (``Step<n>`` if unknown)."""
        if 0 <= self.step < len(STEP_NAMES):
            return STEP_NAMES[self.step]
        return f"Step{self.step}"

    def __str__(self) -> str:
        return f"{self.height}/{self.round}/{self.step}"


SignState.INITIAL = SignState(0, 0, STEP_PROPOSAL, BlockRef.NIL)


class Refusal(enum.Enum):
    """Why ``check`` refused a request; the value is tmkms's name for the error kind."""

    HEIGHT_REGRESSION = "height regression"
    ROUND_REGRESSION = "round regression"
    STEP_REGRESSION = "step regression"
    DOUBLE_SIGN = "double sign detected"
    MAX_HEIGHT = "max height exceeded"


def check(last: SignState, req: SignState, max_height: int | None = None) -> Refusal | None:
    """Decide whether ``req`` may be signed after ``last``; None means it may.

    Pure: no I/O, no mutation. See the module docstring for the rule and its reasons.
    """
    if max_height is not None and req.height > max_height:
        return Refusal.MAX_HEIGHT
    if req.height != last.height:
        return None if req.height > last.height else Refusal.HEIGHT_REGRESSION
    if req.round != last.round:
        return None if req.round > last.round else Refusal.ROUND_REGRESSION
    if req.step < last.step:
        return Refusal.STEP_REGRESSION
    if req.block != last.block and (
        # two different real blocks at this height and round, whatever the steps
        (not req.block.is_nil() and not last.block.is_nil())
        # nil against a block (or two different blocks) in the very same step
        or req.step == last.step
    ):
        return Refusal.DOUBLE_SIGN
    return None


def describe_refusal(
    refusal: Refusal, last: SignState, req: SignState, max_height: int | None = None
) -> str:
    """A one-line explanation in tmkms's wording, for logs (not sent to the node)."""
    if refusal is Refusal.HEIGHT_REGRESSION:
        detail = f"last height:{last.height} new height:{req.height}"
    elif refusal is Refusal.ROUND_REGRESSION:
        detail = (
            f"round regression at height:{req.height} last round:{last.round} new round:{req.round}"
        )
    elif refusal is Refusal.STEP_REGRESSION:
        detail = (
            f"step regression at height:{req.height} round:{req.round} "
            f"last step:{last.step} new step:{req.step}"
        )
    elif refusal is Refusal.DOUBLE_SIGN:
        detail = (
            f"attempting to sign a second {req.type_name.lower()} at height:{req.height} "
            f"round:{req.round} step:{req.step} old block id:{last.block} "
            f"new block {req.block}"
        )
    else:
        return f"attempted to sign at height {req.height} which is greater than {max_height}"
    return f"{refusal.value}: {detail}"
