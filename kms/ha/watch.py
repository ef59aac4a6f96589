"""What `tmkms start` runs beside its validators when ``[etcd]`` is configured.

:func:`watch_etcd` pings the cluster once a second (``/readyz`` and ``tmkms_etcd_reachable``
follow it) and brings each chain's local state and shared watermark together on first
contact (:meth:`kms.ha.store.SharedWatermarkStore.reconcile`): a KMS starts without etcd,
refusing to sign, and reconciles as soon as a member answers. A watermark found ahead of the
local state was saved locally by the store; the chain's tracker then reads it, so its next
check starts from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from kms.chain.tracker import ChainTracker
from kms.errors import KmsError
from kms.ha.cas import ReconcileAction
from kms.ha.shared import SharedWatermarks
from kms.ha.store import SharedWatermarkStore
from kms.ops.stats import HaMetrics

__all__ = ["PING_INTERVAL", "watch_etcd"]

log = logging.getLogger("kms.ha")

PING_INTERVAL = 1.0  # seconds between pings of the cluster


async def watch_etcd(
    ha: SharedWatermarks,
    trackers: Callable[[], Mapping[str, ChainTracker]],
    metrics: HaMetrics,
    interval: float = PING_INTERVAL,
) -> None:
    """Ping and reconcile until cancelled (see the module docstring)."""
    while True:
        await _ping(ha, metrics, deadline=trio.current_time() + interval)
        if metrics.reachable:
            for tracker in list(trackers().values()):
                store = tracker.store
                if isinstance(store, SharedWatermarkStore) and store.last_reconcile is None:
                    await _reconcile(tracker, store)
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


async def _reconcile(tracker: ChainTracker, store: SharedWatermarkStore) -> None:
    try:
        done = await store.reconcile()
    except KmsError as exc:  # logged by the store; tried again at the next round
        log.debug("[%s] first contact with etcd not done: %s", tracker.chain_id, exc)
        return
    log.info(
        "[%s] shared watermark %s: local %s, shared %s (written by %s)",
        tracker.chain_id, done.action.value, done.local, done.shared, done.writer,
    )  # fmt: skip
    if done.action is ReconcileAction.ADOPT:
        await tracker.open()  # the store saved the watermark as the local state
