"""One chain's check-and-set of the shared watermark, sans-IO.

Theory of operation
-------------------
:class:`CasMachine` decides, :mod:`kms.ha.store` carries its ops to etcd (through the
group commit of :mod:`kms.ha.batch`) and feeds the answers back. Each step:

* With nothing known about the key, the op is a linearizable read (:class:`ReadOp`).
* Knowing what is stored, the double-sign rule (:func:`kms.chain.state.check`) is applied
  to it. Accepted: the op is a txn (:class:`CasOp`) whose compare is ``MOD(key) ==
  mod_revision`` of that value (``CREATE(key) == 0``, creating the key, is only for
  ``tmkms state init``: see below), whose success branch puts the new watermark (with a
  fresh nonce) and whose failure branch reads the key. Refused, or malformed: that is the
  decision, provided the value was read during this check-and-set; a value remembered from
  an earlier one is re-read first.
* A txn that succeeded: won. One that failed returns the current value in the same round
  trip (its failure branch): if it carries our nonce, an earlier copy of this same txn was
  applied (won); otherwise another writer moved the watermark (a lost compare): back to
  the rule with the new value.
* A missing key is never created here: it was never created (``tmkms state init`` does
  that, an operator's decision), or it was deleted, or etcd lost it, and nothing in etcd
  then tells what another host signed: the machine decides MALFORMED (its ``problem``:
  :data:`MISSING`), never writes. ``floor`` is the highest ``mod_revision`` of the key its
  store has seen. etcd's revisions only grow, so a key read below the floor lost its
  history (etcd restored from an older backup): MALFORMED too. ``highest`` is the highest
  revision it met, the store's next floor.
* A txn with no answer that may have reached etcd leaves the machine *ambiguous*: the next
  op is the identical txn again, whose answer is definitive for both copies, because the
  compare can hold for at most one of them, and not at all once anyone moved the key.

Why a remembered value is enough (one round trip per signature instead of two): the
txn's compare holds only if the key still is at the remembered ``mod_revision``, that is,
still holds the very value the rule was applied to. The rule was thus applied to the
stored value at the txn's linearization point, exactly as after a fresh read. Only a
*refusal* needs a fresh value: a stale one may refuse what the current one allows.

:func:`plan_reconcile` is the first-contact decision between the local state and the
stored watermark.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from kms.chain.state import Refusal, SignState, check
from kms.ha.watermark import Stored, Watermark, format_watermark, new_nonce
from kms.ha.wire import RangeResult, TxnResult, b64

__all__ = [
    "MISSING",
    "CasMachine",
    "CasOp",
    "Decision",
    "Op",
    "ReadOp",
    "ReconcileAction",
    "Verdict",
    "plan_reconcile",
    "went_back",
]


@attrs.frozen
class ReadOp:
    """A linearizable read of ``key``."""

    key: bytes

    def request_op(self) -> dict[str, Any]:
        """This read as one op of a txn."""
        return {"request_range": {"key": b64(self.key)}}


@attrs.frozen
class CasOp:
    """Put ``value`` at ``key`` if it is still at ``revision`` (0: if it does not exist)."""

    key: bytes
    revision: int
    value: bytes
    nonce: str

    def txn(self) -> dict[str, Any]:
        """The txn, as the JSON gateway takes it."""
        key = b64(self.key)
        if self.revision:
            compare = {"result": "EQUAL", "target": "MOD", "key": key,
                       "mod_revision": str(self.revision)}  # fmt: skip
        else:
            compare = {"result": "EQUAL", "target": "CREATE", "key": key, "create_revision": "0"}
        return {
            "compare": [compare],
            "success": [{"request_put": {"key": key, "value": b64(self.value)}}],
            "failure": [{"request_range": {"key": key}}],
        }

    def request_op(self) -> dict[str, Any]:
        """This txn nested in another txn's success branch."""
        return {"request_txn": self.txn()}


Op = ReadOp | CasOp

#: Why a missing key is refused (see :class:`CasMachine` and :func:`plan_reconcile`).
MISSING = (
    "no watermark under the key: never created, or deleted, or etcd lost its data; nothing "
    "tells what another host signed. A new cluster: run `tmkms state init` once, on the host "
    "with the latest state; a lost watermark: `tmkms state set CHAIN_ID HEIGHT` above every "
    "host's last signed height"
)


def went_back(revision: int, floor: int) -> str:
    """Why a key found at ``revision``, below the ``floor`` seen before, is refused."""
    return (
        f"the watermark went back in time (revision {revision}, after {floor} was seen): "
        "etcd restored from an older backup? nothing tells what another host signed since; "
        "raise it with `tmkms state set` at or above every host's state, then restart this KMS"
    )


class Verdict(enum.Enum):
    WON = "won"  # the watermark now holds our value: sign
    LOST = "lost"  # the stored watermark forbids the request: do not sign
    MALFORMED = "malformed"  # the key holds something that is not a watermark


@attrs.frozen
class Decision:
    """The end of a check-and-set. ``stored``: ours when won, else the value that refused."""

    verdict: Verdict
    stored: Stored
    refusal: Refusal | None = None


class CasMachine:
    """Moves one chain's watermark to ``new`` written by ``host`` (see the module docstring)."""

    def __init__(
        self,
        key: bytes,
        new: SignState,
        host: str,
        *,
        known: Stored | None = None,
        max_height: int | None = None,
        nonce: Callable[[], str] = new_nonce,
        floor: int = 0,
    ) -> None:
        self.key = key
        self.new = new
        self._host = host
        self._max_height = max_height
        self._floor = floor  # below it, the key lost its history (see the module docstring)
        self.highest = floor  # the highest mod_revision of the key met so far
        self._nonce = nonce
        self.op: Op | None = ReadOp(key)  # what to send next; None once decided
        self.decision: Decision | None = None
        self.ambiguous = False  # a txn may have been applied and we do not know yet
        self.lost_compares = 0
        self.resends = 0  # txns sent again after no answer
        self.won_by_nonce = False  # won through a copy whose answer was lost
        if known is not None:
            self._plan(known)

    def unanswered(self, maybe_applied: bool) -> None:
        """The op got no answer; ``maybe_applied``: it may have reached etcd. Send it again."""
        if isinstance(self.op, CasOp):
            self.resends += 1
            self.ambiguous = self.ambiguous or maybe_applied

    def answered(self, result: RangeResult | TxnResult) -> None:
        """Feed the answer to ``op``; ValueError if it does not fit the op."""
        op = self.op
        if isinstance(op, ReadOp):
            if not isinstance(result, RangeResult):
                raise ValueError("a read was answered with a txn result")
            self._plan(Stored.from_range(result, self.key))
            return
        if op is None or not isinstance(result, TxnResult) or len(result.responses) != 1:
            raise ValueError("a check-and-set txn got an answer of another shape")
        self.ambiguous = False
        answer = result.responses[0]
        if result.succeeded:
            revision = answer if isinstance(answer, int) and answer else result.revision
            if not revision:
                raise ValueError("a successful check-and-set reply carries no revision")
            mine = Watermark(self.new, self._host, op.nonce)
            self.highest = max(self.highest, revision)
            self._decide(Verdict.WON, Stored(revision, mine, fresh=False))
            return
        if not isinstance(answer, RangeResult):
            raise ValueError("a failed check-and-set reply does not carry the key's value")
        stored = Stored.from_range(answer, self.key)
        if stored.watermark is not None and stored.watermark.nonce == op.nonce:
            self.won_by_nonce = True  # an earlier copy of this txn was applied
            self.highest = max(self.highest, stored.mod_revision)
            self._decide(Verdict.WON, stored.remembered())
            return
        self.lost_compares += 1
        self._plan(stored)

    def _plan(self, stored: Stored) -> None:
        if stored.fresh and stored.missing:
            stored = attrs.evolve(stored, problem=MISSING)
        elif stored.fresh and stored.mod_revision < self._floor:
            stored = attrs.evolve(stored, problem=went_back(stored.mod_revision, self._floor))
        elif stored.fresh:
            self.highest = max(self.highest, stored.mod_revision)
        refusal = None
        if stored.watermark is not None:
            refusal = check(stored.watermark.state, self.new, self._max_height)
        if stored.problem is not None or refusal is not None:
            if not stored.fresh:  # a remembered value may be stale: read the current one
                self.op = ReadOp(self.key)
            elif stored.problem is not None:
                self._decide(Verdict.MALFORMED, stored)
            else:
                self._decide(Verdict.LOST, stored, refusal)
            return
        nonce = self._nonce()
        value = format_watermark(self.new, self._host, nonce)
        self.op = CasOp(self.key, stored.mod_revision, value, nonce)

    def _decide(self, verdict: Verdict, stored: Stored, refusal: Refusal | None = None) -> None:
        self.op = None
        self.decision = Decision(verdict, stored, refusal)


class ReconcileAction(enum.Enum):
    """What first contact does with the local state and the stored watermark."""

    MISSING = "missing"  # no key: refused until `tmkms state init` creates it
    RAISE = "raised"  # the watermark is behind the local state: move it up
    ADOPT = "adopted"  # the watermark is ahead: save it as the local state
    UNCHANGED = "unchanged"  # they agree
    CONFLICT = "conflict"  # same step, different blocks (or incompatible): left as they are
    MALFORMED = "malformed"  # the key holds something that is not a watermark


def plan_reconcile(local: SignState, stored: Stored) -> ReconcileAction:
    """Decide how to bring the local state and the watermark together (pure)."""
    if stored.problem is not None:
        return ReconcileAction.MALFORMED
    if stored.watermark is None:
        return ReconcileAction.MISSING
    shared = stored.watermark.state
    if shared == local:
        return ReconcileAction.UNCHANGED
    if shared.hrs > local.hrs:
        return ReconcileAction.ADOPT
    if shared.hrs < local.hrs and check(shared, local) is None:
        return ReconcileAction.RAISE
    return ReconcileAction.CONFLICT
