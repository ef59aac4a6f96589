"""The supervisor: one nursery task per `[[validator]]`, reconnecting with backoff.

Everything a validator connection shares with others is built once here: the signers (one
registry), the per-chain double-sign trackers and their state files. Each validator then
runs in its own task; a failure is logged with its `[chain@addr]` prefix and retried after a
backoff delay, and never disturbs another validator. SIGINT/SIGTERM cancel the dialling and
waiting; a request already being answered is finished first (see :mod:`kms.session`).
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from kms import __version__
from kms.backoff import Backoff
from kms.chain.durable import StateStore
from kms.chain.hook import apply_state_hook
from kms.chain.local import LocalStore
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker
from kms.chain.writer import StateWriter
from kms.config import ChainConfig, KmsConfig, ValidatorConfig, load_config
from kms.errors import KmsError
from kms.handler import RequestHandler
from kms.keyring import add_softsign, build_registry
from kms.keys import load_ed25519_key, warn_if_readable_by_others
from kms.lock import StateLocks, lock_state_files
from kms.ops.runtime import Operations
from kms.ops.stats import HaMetrics, KmsMetrics, ValidatorMetrics
from kms.reload import ReloadPlan, merge_config, plan_reload
from kms.sdnotify import ReadyNotifier, notify
from kms.session import Session, describe_error
from providers import Registry

if TYPE_CHECKING:
    from kms.ha.shared import SharedWatermarks

log = logging.getLogger("kms.service")
start_log = logging.getLogger("kms.commands.start")

#: Loads tmkms.toml again (SIGHUP), with the command line's overrides.
Reread = Callable[[], KmsConfig]

#: How long `tmkms start` waits for a state file lock (a previous KMS still exiting).
LOCK_WAIT = 3.0
#: How long shutdown waits for the providers to let go (an HSM that stopped answering).
CLOSE_TIMEOUT = 5.0


@attrs.define
class _Running:
    """One validator task: how to stop it, and what it counts."""

    scope: trio.CancelScope
    metrics: ValidatorMetrics
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define
class Service:
    """The running KMS: shared trackers and signers, one supervised task per validator.

    ``config`` is the configuration being served: after a reload, the new file's, except
    for the parts a reload cannot change (see :mod:`kms.reload`).
    """

    config: KmsConfig
    registry: Registry
    trackers: dict[str, ChainTracker]
    backoff_factory: Callable[[], Backoff] = Backoff
    metrics: KmsMetrics = attrs.field(factory=KmsMetrics)
    writer: StateWriter = attrs.field(factory=lambda: StateWriter(trio.CapacityLimiter(8)))
    locks: StateLocks | None = None  # held by `tmkms start`; reloads lock new state files
    _running: dict[ValidatorConfig, _Running] = attrs.field(factory=dict, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _reloading: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _serving: trio.Event = attrs.field(factory=trio.Event, init=False)
    #: the shared watermarks, with [etcd] (kms.ha.shared.SharedWatermarks)
    ha: SharedWatermarks | None = None

    @classmethod
    async def open(
        cls, config: KmsConfig, metrics: KmsMetrics | None = None, locks: StateLocks | None = None
    ) -> Service:
        """Load keys and state files and run state hooks; raises KmsError on any problem.

        ``metrics`` (default: new ones) count what the validators, chains and providers do.
        """
        metrics = metrics if metrics is not None else KmsMetrics()
        registry = build_registry(config, metrics)
        service = cls(config=config, registry=registry, trackers={}, metrics=metrics, locks=locks)
        try:
            if config.etcd is not None:
                from kms.ha.shared import SharedWatermarks

                metrics.ha = HaMetrics()
                service.ha = SharedWatermarks(config.etcd, observer=metrics.ha)
            for chain in config.chains:
                if chain.id in registry:
                    await service._open_chain(chain)
        except BaseException:
            await service.aclose()
            raise
        return service

    async def _open_chain(self, chain: ChainConfig) -> ChainTracker:
        """Open ``chain``'s tracker (state file, state hook) and report it in the metrics."""
        max_height = _max_height(self.config, chain)
        store: StateStore = LocalStore(StateFile(chain.state_file), self.writer, label=chain.id)
        if self.ha is not None:  # every signature also wins the shared watermark first
            store = self.ha.store(chain.id, store, max_height=max_height)
        tracker = ChainTracker(
            chain.id, store, self.registry.consensus(chain.id), max_height=max_height
        )
        await tracker.open()
        if chain.state_hook is not None:
            hook = chain.state_hook
            await apply_state_hook(tracker, hook.cmd, hook.timeout_secs, hook.fail_closed)
        self.trackers[chain.id] = tracker
        self.metrics.add_chain(tracker)
        return tracker

    async def aclose(self) -> None:
        """Release the providers (a YubiHSM session, say); at most ``CLOSE_TIMEOUT`` seconds."""
        if self.ha is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self.ha.aclose()
        await _close_registry(self.registry)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every validator connection until cancelled (or, without reconnect, until done)."""
        async with trio.open_nursery() as providers:
            for task in self.registry.tasks():  # providers' own (an HSM keepalive, say)
                providers.start_soon(task)
            if self.ha is not None and self.metrics.ha is not None:
                from kms.ha.watch import watch_etcd

                providers.start_soon(watch_etcd, self.ha, lambda: self.trackers, self.metrics.ha)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for validator in self.config.validators:
                    self._start(validator)
                self._serving.set()
                task_status.started()
            self._nursery = None
            providers.cancel_scope.cancel()  # they serve the validators: no longer needed

    def _start(self, validator: ValidatorConfig) -> None:
        assert self._nursery is not None, "validators start while serving"
        supervised = self._session(validator)
        running = _Running(trio.CancelScope(), supervised.metrics)
        self._running[validator] = running

        async def run() -> None:
            try:
                with running.scope:
                    await supervise(
                        supervised.session,
                        supervised.backoff,
                        supervised.reconnect,
                        supervised.metrics,
                    )
            finally:
                running.done.set()

        self._nursery.start_soon(run)

    async def _stop(self, validator: ValidatorConfig) -> None:
        """Stop one validator task; a request it is answering is finished first."""
        running = self._running.pop(validator)
        running.scope.cancel()
        await running.done.wait()
        self.metrics.remove_validator(running.metrics)

    async def reload(self, new: KmsConfig) -> ReloadPlan:
        """Apply ``new`` (a fully loaded tmkms.toml) to the running service.

        Everything that can fail (the plan, locks on new state files, new keys, new state
        files and their hooks) is done before anything running changes; on failure it is
        undone and the error raised: the service goes on exactly as before. Then the new
        validators start and the removed ones stop; a removed chain's tracker, keys and
        lock go only once its last validator task has finished, so no request of that chain
        is ever in flight without them.
        """
        await self._serving.wait()
        async with self._reloading:
            plan = plan_reload(self.config, new)
            running = self.config
            self.config = merge_config(running, new, plan)
            try:
                await self._add_chains(plan)
            except BaseException:
                self.config = running
                for chain in plan.add_chains:
                    self._forget_chain(chain)
                raise
            for validator in plan.add_validators:
                self._start(validator)
            for validator in plan.remove_validators:
                await self._stop(validator)
            for chain_id in plan.remove_chains:
                self._forget_chain(running.chain(chain_id))
            return plan

    async def _add_chains(self, plan: ReloadPlan) -> None:
        for chain in plan.add_chains:
            if self.locks is not None:
                self.locks.acquire(chain.state_file, purpose="refusing to add the chain")
        add_softsign(self.registry, self.config, plan.add_softsign)
        for chain in plan.add_chains:
            await self._open_chain(chain)

    def _forget_chain(self, chain: ChainConfig) -> None:
        """Drop a chain's tracker, keys and state file lock (no validator of it runs)."""
        self.trackers.pop(chain.id, None)
        self.metrics.chains.pop(chain.id, None)
        if self.ha is not None:
            self.ha.forget(chain.id)
        self.registry.remove_chain(chain.id)
        if self.locks is not None:
            self.locks.release_one(chain.state_file)

    def _session(self, validator: ValidatorConfig) -> _Supervised:
        chain = self.config.chain(validator.chain_id)
        identity = None
        if validator.secret_key is not None:
            warn_if_readable_by_others(validator.secret_key, log)
            identity = load_ed25519_key(validator.secret_key)
        sign_extensions = (
            chain.sign_extensions
            if chain.sign_extensions is not None
            else validator.protocol_version.extensions_by_default
        )
        backoff = self.backoff_factory()
        signer = self.registry.consensus(chain.id)
        metrics = self.metrics.validator(chain.id, str(validator.addr), signer.provider)
        handler = RequestHandler(
            chain_id=chain.id,
            version=validator.protocol_version,
            tracker=self.trackers[chain.id],
            signer=signer,
            sign_extensions=sign_extensions,
            peer=str(validator.addr),
            metrics=metrics,
        )
        session = Session(
            addr=validator.addr,
            version=validator.protocol_version,
            identity=identity,
            handler=handler,
            timeout=validator.timeout,
            prefix=handler.prefix,
            on_connected=backoff.reset,
            events=metrics,
        )
        return _Supervised(session, backoff, validator.reconnect, metrics)


@attrs.define
class _Supervised:
    session: Session
    backoff: Backoff
    reconnect: bool
    metrics: ValidatorMetrics


async def supervise(
    session: Session, backoff: Backoff, reconnect: bool, metrics: ValidatorMetrics
) -> None:
    """Run ``session`` again and again, logging each failure and sleeping ``backoff``."""
    while True:
        error = None
        try:
            await session.run()
        except (KmsError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            error = describe_error(exc)
            log.error("%s %s", session.prefix, error)
        except Exception as exc:  # one validator's bug must not take the others down
            error = describe_error(exc)
            log.exception("%s unexpected error: %s", session.prefix, error)
        metrics.on_session_ended(error)
        if not reconnect:
            log.info("%s reconnect = false; not dialling again", session.prefix)
            return
        await trio.sleep(backoff.next_delay())
        metrics.on_reconnect()


async def _close_registry(registry: Registry) -> None:
    """``registry.close()`` in a thread, shielded, given up on after ``CLOSE_TIMEOUT``."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        await trio.to_thread.run_sync(registry.close, abandon_on_cancel=True)


def _max_height(config: KmsConfig, chain: ChainConfig) -> int | None:
    """The strictest `max_height` among the validators of ``chain`` (None: no limit)."""
    limits = [
        v.max_height
        for v in config.validators
        if v.chain_id == chain.id and v.max_height is not None
    ]
    return min(limits) if limits else None


async def _serve_until_signal(config: KmsConfig, locks: StateLocks, reread: Reread) -> None:
    metrics = KmsMetrics()
    laddr = config.metrics.laddr if config.metrics is not None else None
    operations = await Operations.open(metrics, laddr)  # a bad address fails before any key
    service = await Service.open(config, metrics, locks)
    try:
        await _serve(service, operations, reread)
    finally:
        await service.aclose()


async def _serve(service: Service, operations: Operations, reread: Reread) -> None:
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with trio.open_signal_receiver(*signums) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(reload_config, service, reread)
                        continue
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    notify("STOPPING=1")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            nursery.start_soon(operations.run)  # metrics/health listener, systemd watchdog
            count = len(service.config.validators)
            await service.serve(task_status=ReadyNotifier(f"serving {count} validator(s)"))
            nursery.cancel_scope.cancel()


async def reload_config(service: Service, reread: Reread) -> None:
    """SIGHUP: read tmkms.toml again and apply it; a bad file changes nothing.

    One line either way: what changed, or (ERROR) why nothing did; one WARNING naming what
    waits for a restart. systemd hears RELOADING=1 and then READY=1.
    """
    notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    path = service.config.path
    try:
        plan = await service.reload(reread())
    except KmsError as exc:
        log.error("reload of %s refused, nothing changed: %s", path, exc)
    except Exception as exc:  # a bug must not stop the chains that are signing
        log.exception("reload of %s failed, nothing changed: %s", path, exc)
    else:
        log.info("reloaded %s: %s", path, plan.summary())
        if plan.not_applied:
            log.warning(
                "reload of %s: not applied until a restart: %s", path, ", ".join(plan.not_applied)
            )
    finally:
        count = len(service.config.validators)
        notify("READY=1", f"STATUS=serving {count} validator(s)")


def run(config: KmsConfig, *, verbose: bool = False, reread: Reread | None = None) -> int:
    """`tmkms start`: serve until SIGINT/SIGTERM; returns the process exit code.

    ``reread`` loads the configuration again on SIGHUP (default: ``config``'s file).
    """
    del verbose  # logging is configured by the CLI before we get here
    start_log.info("tmkms %s starting up...", __version__)
    reread = reread if reread is not None else functools.partial(load_config, config.path)
    # One KMS per state file, for this process's whole life (see kms.lock).
    state_files = [chain.state_file for chain in config.chains]
    with lock_state_files(
        state_files, wait=LOCK_WAIT, purpose="refusing to start a second KMS"
    ) as locks:
        try:
            trio.run(_serve_until_signal, config, locks, reread)
        except BaseExceptionGroup as group:
            # A KmsError raised inside the serving nursery (an unreadable secret_key, say)
            # reaches the CLI as itself: one error line and its exit code, not a traceback.
            leaves = _leaf_errors(group)
            if len(leaves) != 1 or not isinstance(leaves[0], KmsError):
                raise
            raise leaves[0]  # noqa: B904 - its own __cause__ already says why
    log.info("shutdown complete")
    return 0


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside ``group`` and its nested groups."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaf_errors(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves
