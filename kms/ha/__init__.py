"""High availability: several KMS hosts share one watermark per chain in etcd.

Layers, bottom up (each its own module):

* :mod:`kms.ha.wire` -- etcd v3's JSON gateway, sans-IO: bodies out, typed results in;
* :mod:`kms.ha.http` -- HTTP/1.1 over trio streams (TLS too), kept-alive, its own codec;
* :mod:`kms.ha.client` -- :class:`EtcdClient`: failover across members, auth, one error;
* :mod:`kms.ha.watermark` -- the stored value (tmkms state + host + nonce);
* :mod:`kms.ha.cas` -- one chain's check-and-set, sans-IO (:class:`CasMachine`);
* :mod:`kms.ha.batch` -- group commit of many chains' ops into one txn;
* :mod:`kms.ha.store` -- :class:`SharedWatermarkStore`, the tracker's StateStore, and
  :mod:`kms.ha.outcome` -- what it reports (the metrics observer, first contact);
* :mod:`kms.ha.settings` / :mod:`kms.ha.shared` -- ``[etcd]`` and the per-process wiring;
* :mod:`kms.ha.admin` -- reading and raising a watermark for ``tmkms state``.
"""

from kms.config.etcd import EtcdSettings
from kms.ha.client import EtcdClient, Secret
from kms.ha.errors import (
    EtcdCause,
    EtcdError,
    HaDoubleSignRefused,
    HaRefused,
    RefusalCause,
)
from kms.ha.outcome import CasObserver, Reconciled
from kms.ha.settings import open_client
from kms.ha.shared import SharedWatermarks
from kms.ha.store import SharedWatermarkStore

__all__ = [
    "CasObserver",
    "EtcdCause",
    "EtcdClient",
    "EtcdError",
    "EtcdSettings",
    "HaDoubleSignRefused",
    "HaRefused",
    "Reconciled",
    "RefusalCause",
    "Secret",
    "SharedWatermarkStore",
    "SharedWatermarks",
    "open_client",
]
