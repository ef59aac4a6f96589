"""Shared watermarks created for tests, as `tmkms state init` creates them on a new etcd.

The sign path never creates a missing watermark (:mod:`kms.ha.store`), so a test whose
chain is new creates its key first, through the helpers' stdlib etcd client.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from kms.chain.state import SignState
from kms.ha.watermark import format_watermark, new_nonce
from tests.support.etcd import EtcdCluster

__all__ = ["init_watermarks"]


async def init_watermarks(
    etcd: EtcdCluster,
    prefix: str,
    chains: Iterable[str],
    state: SignState = SignState.INITIAL,
    host: str = "ops",
) -> None:
    """Put a watermark at ``state``, written by ``host``, under each chain's key."""
    for chain in chains:
        value = format_watermark(state, host, new_nonce())
        await trio.to_thread.run_sync(etcd.put_value, f"{prefix}{chain}", value)
