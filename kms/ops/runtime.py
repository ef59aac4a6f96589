"""What `tmkms start` runs beside its validators: the metrics/health listener and the watchdog.

:meth:`Operations.open` does everything that can fail (checking that ``prometheus-client``
is installed, binding the listener) before the service's nursery exists, so a bad address
is one clean ``error:`` line at startup; :meth:`Operations.run` then serves until cancelled.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from kms.errors import ConfigError
from kms.ops.health import health, readiness
from kms.ops.server import App, HttpResponse, format_laddr, open_listeners, serve_http
from kms.ops.stats import KmsMetrics
from kms.sdnotify import feed_watchdog, watchdog_interval

__all__ = ["Operations", "make_app"]

log = logging.getLogger("kms.ops")

_JSON = "application/json"
_INDEX = b"tmkms: /metrics /healthz /readyz\n"


def _json(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, _JSON, json.dumps(body, separators=(",", ":")).encode() + b"\n")


def make_app(metrics: KmsMetrics, *, process_metrics: bool = True) -> App:
    """The ``(method, path) -> HttpResponse`` function serving the three endpoints.

    Raises ConfigError when ``prometheus-client`` is not installed.
    """
    try:
        from kms.ops import exposition
    except ImportError as exc:
        raise ConfigError(
            "serving metrics needs the prometheus-client package (pip install 'tmkms-py[metrics]')"
        ) from exc
    registry = exposition.build_registry(metrics, process=process_metrics)

    def app(method: str, path: str) -> HttpResponse:
        del method
        if path == "/metrics":
            return HttpResponse(200, exposition.CONTENT_TYPE, exposition.render(registry))
        if path == "/healthz":
            return _json(200, health(metrics))
        if path == "/readyz":
            body = readiness(metrics)
            return _json(200 if body["ready"] else 503, body)
        if path == "/":
            return HttpResponse(200, "text/plain; charset=utf-8", _INDEX)
        return HttpResponse(404, "text/plain; charset=utf-8", b"not found\n")

    return app


class Operations:
    """The metrics listener (if configured) and the systemd watchdog (if asked for)."""

    def __init__(self, listeners: list[trio.SocketListener], app: App | None) -> None:
        self.listeners = listeners
        self._app = app

    @classmethod
    async def open(cls, metrics: KmsMetrics, laddr: str | None) -> Operations:
        """Bind the metrics listener on ``laddr`` (None: no listener); KmsError on failure."""
        if laddr is None:
            return cls([], None)
        app = make_app(metrics)
        listeners = await open_listeners(laddr)
        return cls(listeners, app)

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every bound listener (the real port when 0 was asked for)."""
        return [format_laddr(listener.socket.getsockname()) for listener in self.listeners]

    async def run(self) -> None:
        """Serve HTTP and feed the watchdog until cancelled."""
        async with trio.open_nursery() as nursery:
            interval = watchdog_interval()
            if interval is not None:
                nursery.start_soon(feed_watchdog, interval)
            if self.listeners and self._app is not None:
                await nursery.start(serve_http, self.listeners, self._app)
                for address in self.addresses:
                    log.info(
                        "serving metrics on http://%s/metrics (health: /healthz /readyz)", address
                    )
