"""The JSON bodies of ``/healthz`` (the process answers) and ``/readyz`` (it can sign).

Ready means: every configured validator connection is up (handshake done, not since
dropped) and every signing provider in use is reachable (its last signature did not fail,
and the provider has not reported itself unreachable), and with ``[etcd]`` a cluster
member with a leader answered the last ping and every chain's first contact is done (a
chain without its watermark, say, refuses to sign: ``etcd.not_reconciled`` names it and
why). A load balancer or an alert can key on the status code alone (200 ready, 503 not);
the body says which part is missing.
"""

from __future__ import annotations

import time
from typing import Any

from kms import __version__
from kms.ops.stats import KmsMetrics

__all__ = ["health", "is_ready", "readiness"]


def is_ready(metrics: KmsMetrics) -> bool:
    """Every validator connected, every provider reachable, and etcd (if used) answering
    with every chain's first contact done."""
    return (
        all(v.connected for v in metrics.validators)
        and all(p.reachable for p in metrics.providers.values())
        and (metrics.ha is None or (metrics.ha.reachable and not metrics.ha.unreconciled))
    )


def health(metrics: KmsMetrics) -> dict[str, Any]:
    """``/healthz``: the process is alive; its version and uptime."""
    return {
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.time() - metrics.started, 3),
    }


def readiness(metrics: KmsMetrics) -> dict[str, Any]:
    """``/readyz``: ``ready`` plus the state of each validator and provider."""
    now = time.time()
    validators = []
    for v in metrics.validators:
        entry: dict[str, Any] = {
            "chain_id": v.chain_id,
            "addr": v.validator,
            "connected": v.connected,
        }
        if v.connected_since is not None:
            entry["connected_seconds"] = round(now - v.connected_since, 3)
        if v.last_error is not None:
            entry["last_error"] = v.last_error
        if v.last_signed is not None:
            entry["last_signed"] = "{}/{}/{}".format(*v.last_signed)
        validators.append(entry)
    providers = []
    for p in metrics.providers.values():
        item: dict[str, Any] = {"name": p.name, "reachable": p.reachable}
        if not p.reachable and p.last_error is not None:
            item["last_error"] = p.last_error
        providers.append(item)
    body: dict[str, Any] = {
        "ready": is_ready(metrics),
        "validators": validators,
        "providers": providers,
    }
    if metrics.ha is not None:
        etcd: dict[str, Any] = {"reachable": metrics.ha.reachable}
        if metrics.ha.endpoint is not None:
            etcd["endpoint"] = metrics.ha.endpoint
        if not metrics.ha.reachable and metrics.ha.last_error is not None:
            etcd["last_error"] = metrics.ha.last_error
        if metrics.ha.unreconciled:
            etcd["not_reconciled"] = dict(sorted(metrics.ha.unreconciled.items()))
        body["etcd"] = etcd
    return body
