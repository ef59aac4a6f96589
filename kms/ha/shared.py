"""One process's view of the shared watermarks: the client, the group commit, the stores.

The service builds one :class:`SharedWatermarks` from ``[etcd]`` and asks it for a store
per chain (:meth:`SharedWatermarks.store`), wrapping that chain's local store. Every store
shares the client (its kept-alive connections, its preferred member, its auth token) and
the batcher, so chains signing together share etcd round trips.
"""

from __future__ import annotations

from kms.chain.durable import StateStore
from kms.config.etcd import EtcdSettings
from kms.ha.batch import TxnBatcher
from kms.ha.client import EtcdClient
from kms.ha.errors import EtcdCause, EtcdError
from kms.ha.outcome import CasObserver
from kms.ha.settings import open_client
from kms.ha.store import SharedWatermarkStore
from kms.ha.wire import Status

__all__ = ["SharedWatermarks"]


class SharedWatermarks:
    """The ``[etcd]`` section at work (see the module docstring)."""

    def __init__(
        self,
        settings: EtcdSettings,
        *,
        observer: CasObserver | None = None,
        client: EtcdClient | None = None,
    ) -> None:
        self.settings = settings
        self.client = client if client is not None else open_client(settings)
        self.batcher = TxnBatcher(self.client)
        self.observer = observer
        self._stores: dict[str, SharedWatermarkStore] = {}

    def store(
        self, chain_id: str, local: StateStore, *, max_height: int | None = None
    ) -> SharedWatermarkStore:
        """The shared store of ``chain_id`` in front of ``local`` (one per chain)."""
        if chain_id in self._stores:
            raise ValueError(f"chain {chain_id} already has a shared watermark store")
        store = SharedWatermarkStore(
            local,
            chain_id=chain_id,
            client=self.client,
            host=self.settings.host,
            batcher=self.batcher,
            prefix=self.settings.prefix,
            timeout=self.settings.timeout,
            max_height=max_height,
            observer=self.observer,
        )
        self._stores[chain_id] = store
        return store

    def forget(self, chain_id: str) -> None:
        """Drop ``chain_id``'s store (its chain was removed by a reload)."""
        self._stores.pop(chain_id, None)

    @property
    def stores(self) -> dict[str, SharedWatermarkStore]:
        """The stores made so far, by chain."""
        return dict(self._stores)

    async def ping(self) -> Status:
        """One member's status (for ``/readyz``); EtcdError if none answers with a leader.

        Bound it with the caller's cancel scope, as every call of the client.
        """
        status = await self.client.status()
        if not status.leader:
            raise EtcdError(EtcdCause.UNAVAILABLE, "no leader", endpoint=self.client.endpoint)
        return status

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()
