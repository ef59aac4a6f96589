"""The supervisor: one nursery task per `[[validator]]`, reconnecting with backoff.

Everything a validator connection shares with others is built once here: the signers (one
registry), the per-chain double-sign trackers and their state files. Each validator then
runs in its own task; a failure is logged with its `[chain@addr]` prefix and retried after a
backoff delay, and never disturbs another validator. SIGINT/SIGTERM cancel the dialling and
waiting; a request already being answered is finished first (see :mod:`kms.session`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import attrs
import trio

from kms import __version__
from kms.backoff import Backoff
from kms.chain.hook import apply_state_hook
from kms.chain.local import LocalStore
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker
from kms.chain.writer import StateWriter
from kms.config import ChainConfig, KmsConfig, ValidatorConfig
from kms.errors import KmsError
from kms.handler import RequestHandler
from kms.keyring import build_registry
from kms.keys import load_ed25519_key, warn_if_readable_by_others
from kms.lock import lock_state_files
from kms.ops.runtime import Operations
from kms.ops.stats import KmsMetrics, ValidatorMetrics
from kms.sdnotify import ReadyNotifier, notify
from kms.session import Session, describe_error
from providers import Registry

log = logging.getLogger("kms.service")
start_log = logging.getLogger("kms.commands.start")

#: How long `tmkms start` waits for a state file lock (a previous KMS still exiting).
LOCK_WAIT = 3.0
#: How long shutdown waits for the providers to let go (an HSM that stopped answering).
CLOSE_TIMEOUT = 5.0


@attrs.define
class Service:
    """The running KMS: shared trackers and signers, one supervised task per validator."""

    config: KmsConfig
    registry: Registry
    trackers: dict[str, ChainTracker]
    backoff_factory: Callable[[], Backoff] = Backoff
    metrics: KmsMetrics = attrs.field(factory=KmsMetrics)

    @classmethod
    async def open(cls, config: KmsConfig, metrics: KmsMetrics | None = None) -> Service:
        """Load keys and state files and run state hooks; raises KmsError on any problem.

        ``metrics`` (default: new ones) count what the validators, chains and providers do.
        """
        metrics = metrics if metrics is not None else KmsMetrics()
        registry = build_registry(config, metrics)
        try:
            trackers = await cls._open_trackers(config, registry, metrics)
        except BaseException:
            await _close_registry(registry)
            raise
        return cls(config=config, registry=registry, trackers=trackers, metrics=metrics)

    @staticmethod
    async def _open_trackers(
        config: KmsConfig, registry: Registry, metrics: KmsMetrics
    ) -> dict[str, ChainTracker]:
        trackers: dict[str, ChainTracker] = {}
        writer = StateWriter(trio.CapacityLimiter(8))
        for chain in config.chains:
            if chain.id not in registry.chains():
                continue
            tracker = ChainTracker(
                chain.id,
                LocalStore(StateFile(chain.state_file), writer, label=chain.id),
                registry.consensus(chain.id),
                max_height=_max_height(config, chain),
            )
            await tracker.open()
            if chain.state_hook is not None:
                hook = chain.state_hook
                await apply_state_hook(tracker, hook.cmd, hook.timeout_secs, hook.fail_closed)
            trackers[chain.id] = tracker
            metrics.add_chain(tracker)
        return trackers

    async def aclose(self) -> None:
        """Release the providers (a YubiHSM session, say); at most ``CLOSE_TIMEOUT`` seconds."""
        await _close_registry(self.registry)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every validator connection until cancelled (or, without reconnect, until done)."""
        supervised = [self._session(v) for v in self.config.validators]
        async with trio.open_nursery() as providers:
            for task in self.registry.tasks():  # providers' own (an HSM keepalive, say)
                providers.start_soon(task)
            async with trio.open_nursery() as nursery:
                for each in supervised:
                    nursery.start_soon(
                        supervise, each.session, each.backoff, each.reconnect, each.metrics
                    )
                task_status.started()
            providers.cancel_scope.cancel()  # they serve the validators: no longer needed

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


async def _serve_until_signal(config: KmsConfig) -> None:
    metrics = KmsMetrics()
    laddr = config.metrics.laddr if config.metrics is not None else None
    operations = await Operations.open(metrics, laddr)  # a bad address fails before any key
    service = await Service.open(config, metrics)
    try:
        await _serve(config, service, operations)
    finally:
        await service.aclose()


async def _serve(config: KmsConfig, service: Service, operations: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    notify("STOPPING=1")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            nursery.start_soon(operations.run)  # metrics/health listener, systemd watchdog
            count = len(config.validators)
            await service.serve(task_status=ReadyNotifier(f"serving {count} validator(s)"))
            nursery.cancel_scope.cancel()


def run(config: KmsConfig, *, verbose: bool = False) -> int:
    """`tmkms start`: serve until SIGINT/SIGTERM; returns the process exit code."""
    del verbose  # logging is configured by the CLI before we get here
    start_log.info("tmkms %s starting up...", __version__)
    # One KMS per state file, for this process's whole life (see kms.lock).
    state_files = [chain.state_file for chain in config.chains]
    with lock_state_files(state_files, wait=LOCK_WAIT, purpose="refusing to start a second KMS"):
        try:
            trio.run(_serve_until_signal, config)
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
