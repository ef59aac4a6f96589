"""What `tmkms start` runs beside its validators when ``[etcd]`` is configured.

:func:`watch_etcd` pings the cluster once a second (``/readyz`` and ``tmkms_etcd_reachable``
follow it) and brings each chain's local state and shared watermark together on first
contact (:meth:`kms.ha.store.SharedWatermarkStore.reconcile`): a KMS starts without etcd,
refusing to sign, and reconciles as soon as a member answers. A first contact that etcd
answers with a refusal (no watermark yet, a malformed one, credentials refused) is one
ERROR line naming the chain and what to do, not repeated while the cause stays the same,
and is tried again every round: a key created by ``tmkms state init`` is picked up within a
second. Until a chain's first contact is done, ``/readyz`` names it and why (not ready). A
watermark found ahead of the local state was saved locally by the store; the chain's
tracker then reads it, so its next check starts from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from kms.chain.tracker import ChainTracker
from kms.errors import KmsError
from kms.ha.cas import ReconcileAction
from kms.ha.errors import HaRefused, RefusalCause
from kms.ha.shared import SharedWatermarks
from kms.ha.store import SharedWatermarkStore
from kms.ops.stats import HaMetrics

__all__ = ["PING_INTERVAL", "watch_etcd"]

log = logging.getLogger("kms.ha")

PING_INTERVAL = 1.0  # seconds between pings of the cluster
#: First-contact refusals etcd answered (not a lost connection): worth an ERROR line, as
#: any other error (the local state file).
_ANSWERED = (RefusalCause.MISSING, RefusalCause.MALFORMED, RefusalCause.AUTH, RefusalCause.TLS)


async def watch_etcd(
    ha: SharedWatermarks,
    trackers: Callable[[], Mapping[str, ChainTracker]],
    metrics: HaMetrics,
    interval: float = PING_INTERVAL,
) -> None:
    """Ping and reconcile until cancelled (see the module docstring)."""
    reported: dict[str, str] = {}  # chain -> the refusal of its first contact last logged
    waiting: dict[str, str] = {}  # chain -> why its first contact is not done
    while True:
        await _ping(ha, metrics, deadline=trio.current_time() + interval)
        shared = {
            chain: (tracker, tracker.store)
            for chain, tracker in trackers().items()
            if isinstance(tracker.store, SharedWatermarkStore)
        }
        for chain, (tracker, store) in shared.items():
            if store.last_reconcile is None and metrics.reachable:
                waiting[chain] = await _reconcile(tracker, store, reported)
        waiting = {  # a save may have done first contact meanwhile; a chain may be gone
            chain: waiting.get(chain, "not tried yet: etcd not reachable")
            for chain, (_, store) in shared.items()
            if store.last_reconcile is None
        }
        metrics.set_unreconciled(waiting)
        await trio.sleep(interval)


async def _ping(ha: SharedWatermarks, metrics: HaMetrics, *, deadline: float) -> None:
    try:
        with trio.fail_at(deadline):
            await ha.ping()
    except (KmsError, trio.TooSlowError) as exc:
        error = str(exc) or "no answer within the ping interval"
        if metrics.reachable or metrics.last_error is None:
            log.warning("etcd not reachable: %s", error)
        metrics.set_reachable(False, ha.client.endpoint, error)
    else:
        if not metrics.reachable:
            log.info("etcd reachable at %s", ha.client.endpoint)
        metrics.set_reachable(True, ha.client.endpoint, None)


async def _reconcile(
    tracker: ChainTracker, store: SharedWatermarkStore, reported: dict[str, str]
) -> str:
    """First contact for ``tracker``'s chain; why it is not done ("" once it is)."""
    chain = tracker.chain_id
    try:
        done = await store.reconcile()
    except KmsError as exc:  # tried again at the next round
        transient = isinstance(exc, HaRefused) and exc.cause not in _ANSWERED
        if not transient and reported.get(chain) != str(exc):
            log.error("[%s] first contact with etcd refused: %s", chain, exc)
            reported[chain] = str(exc)
        else:
            log.debug("[%s] first contact with etcd not done: %s", chain, exc)
        return str(exc)
    reported.pop(chain, None)
    log.info(
        "[%s] shared watermark %s: local %s, shared %s (written by %s)",
        chain, done.action.value, done.local, done.shared, done.writer,
    )  # fmt: skip
    if done.action is ReconcileAction.ADOPT:
        await tracker.open()  # the store saved the watermark as the local state
    return ""
