"""Group commit of many chains' etcd ops into one txn per round trip.

Theory of operation
-------------------
Chains signing at the same time each have one op for etcd at a time (a read or a
check-and-set txn, :mod:`kms.ha.cas`). :meth:`TxnBatcher.run` queues the op and, when no
flush is in flight, its caller leads one at once: a lone chain pays no wait for batching.
A flush sends what is queued, and the ops queued meanwhile wait for the next flush, which
one of their callers leads as soon as this one ends (as :mod:`kms.chain.writer` batches
fsyncs). One flush at a time: the ops arriving during a round trip make the next batch.

A flush of one op sends it as it is: a linearizable range, or the chain's own txn. A
flush of several sends one txn whose success branch holds one op per chain: a
``request_range``, or a ``request_txn`` with that chain's own compare (etcd >= 3.3 nests
txns). The outer txn has no compare, so it always takes its success branch, and each
nested txn succeeds or fails on its own compare: one chain's lost compare does not fail
the others. etcd refuses a txn naming a key twice, so a key already in the flush waits for
the next one; and it refuses more than ``--max-txn-ops`` ops (128, nested ones counted),
so a flush takes at most ``max_ops``; when etcd still says "too many operations" (nothing
was applied), the flush is sent again in halves and ``max_ops`` lowered to fit.

An error of the flush is every op's error. Whether an op may have been applied is the
op's caller's question (:class:`Pending.taken` says whether it was in a flush at all).
"""

from __future__ import annotations

import attrs
import trio

from kms.ha.cas import CasOp, Op, ReadOp
from kms.ha.client import EtcdClient, encode
from kms.ha.errors import EtcdCause, EtcdError
from kms.ha.wire import RangeResult, TxnResult

__all__ = ["Pending", "TxnBatcher"]

MAX_OPS = 64


@attrs.define(eq=False)
class Pending:
    """One op waiting for (or in) a flush, and its outcome."""

    op: Op
    taken: bool = False  # part of a flush: it may have been sent
    done: trio.Event = attrs.field(factory=trio.Event)
    result: RangeResult | TxnResult | None = None
    error: EtcdError | None = None


class TxnBatcher:
    """Sends the ops of many chains to one etcd cluster (see the module docstring)."""

    def __init__(self, client: EtcdClient, *, max_ops: int = MAX_OPS) -> None:
        if max_ops < 1:
            raise ValueError("max_ops must be at least 1")
        self._client = client
        self._max_ops = max_ops
        self._queue: list[Pending] = []
        self._flushing = False
        self._slot_free = trio.Event()
        self.flushes = 0
        self.flushed_ops = 0
        self.largest_flush = 0

    @property
    def busy(self) -> bool:
        """A flush is in flight or ops are queued: other chains are talking to etcd."""
        return self._flushing or bool(self._queue)

    async def run(self, pending: Pending) -> RangeResult | TxnResult:
        """Send ``pending.op`` (in some flush) and return its result, or raise its EtcdError.

        A cancelled caller whose op is still queued takes it out of the queue; one whose op
        is in a flush leaves it there (``pending.taken`` tells the difference).
        """
        self._queue.append(pending)
        try:
            while not pending.taken:
                if not self._flushing:
                    await self._lead()
                else:
                    await self._slot_free.wait()
            await pending.done.wait()
        except BaseException:
            if not pending.taken:
                self._queue.remove(pending)
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _take(self) -> list[Pending]:
        """The next flush: queued ops in order, each key once, at most ``max_ops``."""
        batch: list[Pending] = []
        keys: set[bytes] = set()
        rest: list[Pending] = []
        for pending in self._queue:
            if len(batch) < self._max_ops and pending.op.key not in keys:
                keys.add(pending.op.key)
                pending.taken = True
                batch.append(pending)
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    async def _lead(self) -> None:
        batch = self._take()
        self._flushing = True
        self.flushes += 1
        self.flushed_ops += len(batch)
        self.largest_flush = max(self.largest_flush, len(batch))
        try:
            await self._flush(batch)
        except EtcdError as exc:
            for pending in batch:
                if pending.result is None:
                    pending.error = exc
        finally:
            self._flushing = False
            for pending in batch:
                if pending.result is None and pending.error is None:  # the leader was cancelled
                    pending.error = EtcdError(
                        EtcdCause.UNREACHABLE, "the flush carrying this op was abandoned", sent=True
                    )
                pending.done.set()
            if self._queue:  # one of the waiting callers leads the next flush
                self._slot_free.set()
                self._slot_free = trio.Event()

    async def _flush(self, batch: list[Pending]) -> None:
        try:
            await self._send(batch)
        except EtcdError as exc:
            if "too many operations" not in str(exc) or len(batch) == 1:
                raise
            # etcd refused the whole txn (nothing applied): send it in halves, and keep
            # the next flushes within what this cluster takes
            half = len(batch) // 2
            self._max_ops = max(1, min(self._max_ops, half))
            await self._flush(batch[:half])
            await self._flush(batch[half:])

    async def _send(self, batch: list[Pending]) -> None:
        if len(batch) == 1:
            op = batch[0].op
            if isinstance(op, ReadOp):
                batch[0].result = await self._client.range(op.key)
            else:
                batch[0].result = await self._client.txn(encode(op.txn()))
            return
        outer = await self._client.txn(encode({"success": [p.op.request_op() for p in batch]}))
        if not outer.succeeded or len(outer.responses) != len(batch):
            raise EtcdError(
                EtcdCause.PROTOCOL,
                f"a batch of {len(batch)} ops got {len(outer.responses)} results",
                sent=True,
            )
        for pending, result in zip(batch, outer.responses, strict=True):
            expected = TxnResult if isinstance(pending.op, CasOp) else RangeResult
            if not isinstance(result, expected):
                raise EtcdError(
                    EtcdCause.PROTOCOL, "a batched op got another op's result", sent=True
                )
            pending.result = result
