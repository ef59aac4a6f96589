"""The shared watermark in front of a chain's local state: etcd first, then the local save.

Theory of operation
-------------------
:class:`SharedWatermarkStore` is a :class:`kms.chain.durable.StateStore`: the tracker calls
``save(new)`` under the chain's lock, shielded from cancellation, after its local check
passed. ``save`` runs the check-and-set of :mod:`kms.ha.cas` (through the process's group
commit, :mod:`kms.ha.batch`) within ``timeout`` seconds, and only when it won saves the
local state; any other ending raises an :class:`kms.ha.errors.HaRefused` (never a
signature) after one ERROR line naming the chain and the cause, and one observer call:

* won: ``cas_won(chain, seconds)``;
* lost: the stored watermark, written by another writer, forbids the request (the rule):
  ``cas_lost(chain)``, and the refusal is a code-2 double-sign refusal, as tmkms's;
* refused: ``cas_refused(chain, cause)``, cause one of unreachable, unavailable (no
  leader), ambiguous (a txn may have been applied and no definitive answer came in time),
  rule (the watermark forbids it, and this process wrote it: an abandoned txn applied
  late), malformed (the key holds no watermark; or it is older than a revision seen
  before: etcd restored from a backup), missing (no key: never created, or deleted, or
  etcd lost it; only `tmkms state init` creates it), auth, tls, protocol.

Unreachable, unavailable and protocol errors are retried (briefly backing off, the client
moving on to the next member) until the timeout; auth and TLS errors end the attempt at
once: another try would meet the same answer.

The local save follows the won check-and-set, never runs beside it: the tracker trusts its
state file after a restart (it signs a request equal to it without asking the store, and
first contact leaves a conflicting local state as it is), so a state file that moved for a
check-and-set that was then lost could be signed at a step another host signed
(tests/test_ha_sign_order.py). Only the slow part may run beside it: a
:class:`kms.chain.durable.PreparingStore` writes and fsyncs the new state beside the state
file meanwhile (after first contact, and when no other chain is talking to etcd or saving:
then the saves of chains signing together share one batch instead), and the store installs
it in the state file's place once the check-and-set is won, or drops it. The state file
never holds a state whose check-and-set was not won.

First contact (:meth:`reconcile`, also run lazily by the first ``save``) brings the two
states together: a watermark behind the local state is raised to it (check-and-set, so a
concurrent writer is never overwritten), and a watermark ahead of it is saved as the local
state. What happened is returned (and kept in ``last_reconcile``), so the caller can adopt
the new local state in memory. A missing key is *not* created (the spec said so; it is not
safe): nothing tells a key never created from one etcd lost, and a host whose local state
is behind what another host signed would create it low and sign that step again. First
contact refuses (cause missing) until an operator creates it with ``tmkms state init``,
then succeeds at the next try: every ``save``, and the watcher once a second.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from kms.chain.durable import PreparedSave, PreparingStore, StateStore
from kms.chain.state import SignState, describe_refusal
from kms.ha.batch import Pending, TxnBatcher
from kms.ha.cas import (
    MISSING,
    CasMachine,
    CasOp,
    Decision,
    ReadOp,
    ReconcileAction,
    Verdict,
    plan_reconcile,
)
from kms.ha.client import EtcdClient
from kms.ha.errors import EtcdCause, EtcdError, HaDoubleSignRefused, HaRefused, RefusalCause
from kms.ha.outcome import CasObserver, Reconciled, Silent
from kms.ha.watermark import Stored, watermark_key
from kms.ha.wire import RangeResult

__all__ = ["SharedWatermarkStore"]

log = logging.getLogger("kms.ha")
T = TypeVar("T")

RETRY_INITIAL = 0.01  # seconds between attempts while etcd is unreachable or leaderless
RETRY_CAP = 0.1
# Worth another try within the timeout (maybe at another member): a broken connection, no
# leader, a garbled or cut reply. Refused auth or TLS would only be refused again.
_TRANSIENT = (EtcdCause.UNREACHABLE, EtcdCause.UNAVAILABLE, EtcdCause.PROTOCOL)


class _Stop(Exception):
    """Ends a check-and-set without a win; becomes an HaRefused."""

    def __init__(self, cause: RefusalCause, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


class SharedWatermarkStore:
    """One chain's local StateStore behind its watermark in etcd (see the module docstring)."""

    def __init__(
        self,
        local: StateStore,
        *,
        chain_id: str,
        client: EtcdClient,
        host: str,
        batcher: TxnBatcher | None = None,
        prefix: str = "/tmkms/",
        timeout: float = 1.0,
        max_height: int | None = None,
        observer: CasObserver | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._local = local
        self._preparing = local if isinstance(local, PreparingStore) else None
        self._chain_id = chain_id
        self._client = client
        self._host = host
        self._batcher = batcher if batcher is not None else TxnBatcher(client)
        self.key = watermark_key(prefix, chain_id)
        self._timeout = timeout
        self._max_height = max_height
        self._observer: CasObserver = observer if observer is not None else Silent()
        self._lock = trio.Lock()
        self._local_state: SignState | None = None
        self._known: Stored | None = None  # the stored value as last seen (a guess)
        self._mine: collections.deque[str] = collections.deque(maxlen=16)  # our nonces
        self._machine: CasMachine | None = None
        self._floor = 0  # the highest mod_revision of the key seen (etcd's only grow)
        self._last_error: EtcdError | None = None
        self.last_reconcile: Reconciled | None = None
        self.counters: collections.Counter[str] = collections.Counter()

    def describe(self) -> str:
        """The local store, and the etcd key beside it."""
        return f"{self._local.describe()} + etcd key {self.key.decode(errors='replace')}"

    @property
    def known(self) -> Stored | None:
        """The stored watermark as this store last saw it (None: not read yet, or unsure)."""
        return self._known

    async def load(self) -> SignState:
        """The local state (etcd is not needed to start)."""
        state = await self._local.load()
        self._local_state = state
        return state

    async def save(self, state: SignState) -> None:
        """Win the check-and-set for ``state``, then save it locally; HaRefused if not won."""
        started = time.perf_counter()
        async with self._lock:
            prepared: list[PreparedSave] = []
            local = self._preparing
            try:
                if (
                    local is not None
                    and self.last_reconcile is not None  # first contact may save to the file
                    and not self._batcher.busy  # other chains are signing: their saves batch
                    and local.may_prepare()
                ):
                    decision = await self._beside(local, state, prepared)
                else:
                    decision = await self._bounded(self._check_and_set, state)
            except _Stop as stop:
                _discard(prepared)
                raise self._refused(state, stop.cause, stop.detail) from stop.__cause__
            except BaseException:
                _discard(prepared)
                raise
            if decision.verdict is not Verdict.WON:
                _discard(prepared)
                raise self._judged(state, decision)
            self._observer.cas_won(self._chain_id, time.perf_counter() - started)
            if prepared:
                await prepared[0].install()
            else:
                await self._local.save(state)
            self._local_state = state

    async def _beside(
        self, local: PreparingStore, state: SignState, prepared: list[PreparedSave]
    ) -> Decision:
        """The check-and-set, the local save's slow part beside it (into ``prepared``)."""

        async def prepare() -> None:
            early = await local.prepare(state)
            if early is not None:
                prepared.append(early)

        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prepare)
            try:
                decision = await self._bounded(self._check_and_set, state)
            except Exception as exc:  # raised once the prepared save is done, not grouped
                failed = exc
        if failed is not None:
            raise failed
        return decision

    async def reconcile(self) -> Reconciled:
        """First contact now (see the module docstring); HaRefused when etcd does not allow it."""
        async with self._lock:
            try:
                return await self._bounded(self._reconcile)
            except _Stop as stop:
                message = f"shared watermark of {self._chain_id}: {stop.cause.value}: {stop.detail}"
                raise HaRefused(stop.cause, message) from stop.__cause__

    async def _bounded(self, work: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``work`` within the timeout; _Stop with the cause when it does not finish."""
        self._machine, self._last_error = None, None
        with trio.move_on_after(self._timeout):
            return await work(*args)
        self._known = None
        machine, error = self._machine, self._last_error
        if machine is not None and machine.ambiguous:
            cause, detail = RefusalCause.AMBIGUOUS, "a txn may have been applied; no answer"
        elif error is not None:
            cause, detail = RefusalCause.from_etcd(error.cause), str(error)
        else:
            cause, detail = RefusalCause.UNREACHABLE, "no answer from etcd"
        raise _Stop(cause, f"{detail} (within {self._timeout:g} s)")

    async def _check_and_set(self, state: SignState) -> Decision:
        if self.last_reconcile is None:
            await self._reconcile()
        machine = CasMachine(
            self.key,
            state,
            self._host,
            known=self._known,
            max_height=self._max_height,
            floor=self._floor,  # reconciled: the key exists, at this revision or later
        )
        return await self._drive(machine)

    async def _drive(self, machine: CasMachine) -> Decision:
        """Carry ``machine``'s ops to etcd until it decides."""
        self._machine = machine
        try:
            return await self._drive_ops(machine)
        finally:
            self._floor = max(self._floor, machine.highest)
            self.counters["lost_compares"] += machine.lost_compares
            self.counters["resends"] += machine.resends
            self.counters["won_by_nonce"] += machine.won_by_nonce

    async def _drive_ops(self, machine: CasMachine) -> Decision:
        delay = RETRY_INITIAL
        while machine.op is not None:
            pending = Pending(machine.op)
            if isinstance(pending.op, CasOp) and pending.op.nonce not in self._mine:
                self._mine.append(pending.op.nonce)
            try:
                result = await self._batcher.run(pending)
                machine.answered(result)
            except EtcdError as exc:
                self._known, self._last_error = None, exc
                machine.unanswered(maybe_applied=pending.taken and exc.sent)
                if exc.cause not in _TRANSIENT:
                    raise _Stop(RefusalCause.from_etcd(exc.cause), str(exc)) from exc
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)
            except ValueError as exc:
                self._known = None
                raise _Stop(RefusalCause.PROTOCOL, f"unexpected reply: {exc}") from exc
        assert machine.decision is not None
        self._known = machine.decision.stored.remembered()
        return machine.decision

    async def _reconcile(self) -> Reconciled:
        local = self._local_state if self._local_state is not None else await self.load()
        self._machine = None
        stored = await self._read()
        self._floor = max(self._floor, stored.mod_revision)
        while True:
            action = plan_reconcile(local, stored)
            if action is ReconcileAction.MALFORMED:
                raise _Stop(RefusalCause.MALFORMED, _malformed(self.key, stored))
            if action is ReconcileAction.MISSING:
                raise _Stop(RefusalCause.MISSING, _missing(self.key))
            if action is ReconcileAction.RAISE:
                decision = await self._drive(CasMachine(self.key, local, self._host, known=stored))
                if decision.verdict is not Verdict.WON:
                    stored = decision.stored  # someone moved it meanwhile: decide again
                    continue
                stored = decision.stored
            elif action is ReconcileAction.ADOPT:
                assert stored.watermark is not None
                with trio.CancelScope(shield=True):
                    await self._local.save(stored.watermark.state)
                local = self._local_state = stored.watermark.state
            self._known = stored.remembered()
            break
        assert stored.watermark is not None
        done = Reconciled(action, local, stored.watermark.state, stored.watermark.host)
        self._log_reconcile(done)
        self.last_reconcile = done
        return done

    async def _read(self) -> Stored:
        """A linearizable read of the key, retried like a check-and-set's ops."""
        delay = RETRY_INITIAL
        while True:
            try:
                result = await self._batcher.run(Pending(ReadOp(self.key)))
            except EtcdError as exc:
                self._last_error = exc
                if exc.cause not in _TRANSIENT:
                    raise _Stop(RefusalCause.from_etcd(exc.cause), str(exc)) from exc
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)
                continue
            if not isinstance(result, RangeResult):
                raise _Stop(RefusalCause.PROTOCOL, "a read got a txn result")
            return Stored.from_range(result, self.key)

    def _log_reconcile(self, done: Reconciled) -> None:
        chain, action = self._chain_id, done.action
        if action is ReconcileAction.CONFLICT:
            log.error(
                "[%s] shared watermark %s (by %s) conflicts with the local state %s: left as "
                "they are; requests are checked against both",
                chain, done.shared, done.writer, done.local,
            )  # fmt: skip
        elif action is not ReconcileAction.UNCHANGED:
            log.warning(
                "[%s] shared watermark %s: local %s, shared %s (by %s)",
                chain, action.value, done.local, done.shared, done.writer,
            )  # fmt: skip

    def _judged(self, state: SignState, decision: Decision) -> HaRefused:
        stored = decision.stored
        if stored.missing:
            return self._refused(state, RefusalCause.MISSING, _missing(self.key))
        if decision.verdict is Verdict.MALFORMED or stored.watermark is None:
            return self._refused(state, RefusalCause.MALFORMED, _malformed(self.key, stored))
        assert decision.refusal is not None
        shared = stored.watermark
        detail = describe_refusal(decision.refusal, shared.state, state, self._max_height)
        if shared.nonce in self._mine:  # our own write, e.g. an abandoned txn applied late
            return self._refused(state, RefusalCause.RULE, f"{detail} (watermark written here)")
        log.error(
            "[%s] shared watermark %s written by %s forbids %s %s: %s",
            self._chain_id, shared.state, shared.host, state.type_name, state, detail,
        )  # fmt: skip
        self._observer.cas_lost(self._chain_id)
        return HaDoubleSignRefused(f"double signing requested at height: {state.height}", detail)

    def _refused(self, state: SignState, cause: RefusalCause, detail: str) -> HaRefused:
        log.error(
            "[%s] shared watermark %s: refusing to sign %s %s: %s",
            self._chain_id, cause.value, state.type_name, state, detail,
        )  # fmt: skip
        self._observer.cas_refused(self._chain_id, cause.value)
        return HaRefused(cause, f"shared watermark {cause.value}: {detail}")


def _discard(prepared: list[PreparedSave]) -> None:
    for early in prepared:
        early.discard()  # the state file never held it


def _missing(key: bytes) -> str:
    return f"etcd key {key.decode(errors='replace')}: {MISSING}"


def _malformed(key: bytes, stored: Stored) -> str:
    name = key.decode(errors="replace")
    return f"etcd key {name} does not hold a tmkms watermark: {stored.problem}"
