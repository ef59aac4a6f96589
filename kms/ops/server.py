"""A deliberately small HTTP/1.1 server on trio, for ``/metrics``, ``/healthz`` and ``/readyz``.

It answers ``GET`` and ``HEAD`` with one response per connection (``Connection: close``),
which every scraper and probe handles. Each connection has a time limit for the whole
exchange and a cap on the request head, and at most :data:`MAX_CONNECTIONS` are served at
once, so a slow or hostile client cannot starve the event loop the validators share. The
application is a plain function ``(method, path) -> HttpResponse`` that only reads plain
counters; it runs in a worker thread, one request at a time, because encoding the metrics
costs about 5 us per sample (~0.4 ms per validator connection) and the sign path must not
wait for a scrape (the thread gives the event loop the GIL back every few milliseconds).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus

import attrs
import trio

from kms.errors import ConfigError, KmsError

__all__ = [
    "MAX_CONNECTIONS",
    "App",
    "HttpResponse",
    "format_laddr",
    "open_listeners",
    "parse_laddr",
    "parse_request_head",
    "serve_http",
]

log = logging.getLogger("kms.ops")

MAX_HEAD = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
_METHODS = ("GET", "HEAD")


@attrs.frozen
class HttpResponse:
    """A status, a content type and a body."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        """The response on the wire (the body left out for ``HEAD``)."""
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


App = Callable[[str, str], HttpResponse]


def parse_laddr(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> ``(host, port)``; ValueError if malformed."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9181, got {text!r}")
    return host, int(port)


def format_laddr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """``host:port`` (brackets around IPv6) of a bound socket address."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_listeners(laddr: str) -> list[trio.SocketListener]:
    """Listen on ``laddr``; ConfigError if it is malformed, KmsError if it cannot be bound."""
    try:
        host, port = parse_laddr(laddr)
    except ValueError as exc:
        raise ConfigError(f"metrics address: {exc}") from exc
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise KmsError(f"cannot serve metrics on {laddr}: {reason}") from exc


def parse_request_head(head: bytes) -> tuple[str, str] | None:
    """``(method, path)`` from a request head (query string dropped), or None if malformed."""
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not method.isalpha() or not target.startswith("/"):
        return None
    return method, target.split("?", 1)[0]


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    return data


def _plain(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, "text/plain; charset=utf-8", f"{text}\n".encode())


async def _exchange(stream: trio.abc.Stream, app: App, limiter: trio.CapacityLimiter) -> None:
    head = await _read_head(stream)
    if head is None:
        await stream.send_all(_plain(400, "bad request").encode())
        return
    request = parse_request_head(head)
    if request is None:
        await stream.send_all(_plain(400, "bad request").encode())
        return
    method, path = request
    started = time.perf_counter()
    if method not in _METHODS:
        response = attrs.evolve(
            _plain(405, "method not allowed"), headers=(("Allow", ", ".join(_METHODS)),)
        )
    else:
        response = await trio.to_thread.run_sync(app, method, path, limiter=limiter)
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.debug("HTTP %s %s -> %d (%.2f ms)", method, path, response.status, elapsed_ms)
    await stream.send_all(response.encode(head_only=method == "HEAD"))


async def serve_http(
    listeners: Sequence[trio.SocketListener],
    app: App,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listeners`` until cancelled (started: the listeners serving)."""
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
    app_thread = trio.CapacityLimiter(1)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    await _exchange(stream, app, app_thread)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                except Exception:  # a bug in one response must not stop the listener
                    log.exception("error answering an HTTP request")
                    return

    await trio.serve_listeners(handle, list(listeners), task_status=task_status)
