"""A deliberately small HTTP/1.1 server on trio, for ``/metrics``, ``/healthz`` and ``/readyz``.

The bytes are h11's business (a sans-IO HTTP/1.1 state machine): this module feeds it what
the socket receives, acts on the request it parses, and sends the events of the response.
It answers ``GET`` and ``HEAD`` with one response per connection (``Connection: close``),
which every scraper and probe handles; a second request pipelined behind the first is not
answered. Anything h11 cannot parse (junk, an HTTP/1.1 request without ``Host``, a head
longer than :data:`MAX_HEAD`) is answered ``400 Bad Request`` and the connection closed.

Each connection has a time limit for the whole exchange (:data:`REQUEST_TIMEOUT`) and a cap
on the request head, and at most :data:`MAX_CONNECTIONS` are served at once, so a slow or
hostile client cannot starve the event loop the validators share. After its response the
server shuts down its sending side and reads what the client still sends until the client
closes (within the time limit): closing a socket with unread bytes in it would reset the
connection, and the client could lose the response it had not read yet.

The application is a plain function ``(method, path) -> HttpResponse`` that only reads plain
counters; it runs in a worker thread, one request at a time, because encoding the metrics
grows with the number of validator connections and the sign path must not wait for a scrape
(the thread gives the event loop the GIL back every few milliseconds).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus

import attrs
import h11
import trio

from kms.errors import ConfigError, KmsError
from kms.transport.address import format_host_port, parse_listen_address

__all__ = [
    "MAX_CONNECTIONS",
    "App",
    "HttpResponse",
    "format_laddr",
    "open_listeners",
    "serve_http",
]

log = logging.getLogger("kms.ops")

MAX_HEAD = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
_METHODS = ("GET", "HEAD")
_RECEIVE_SIZE = 4096


@attrs.frozen
class HttpResponse:
    """A status, a content type and a body."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def to_h11(self) -> h11.Response:
        """The response head as an h11 event (the body is sent as :class:`h11.Data`)."""
        return h11.Response(
            status_code=self.status,
            reason=HTTPStatus(self.status).phrase.encode("ascii"),
            headers=[
                ("Content-Type", self.content_type),
                ("Content-Length", str(len(self.body))),
                ("Cache-Control", "no-store"),
                ("Connection", "close"),
                *self.headers,
            ],
        )


App = Callable[[str, str], HttpResponse]


def format_laddr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """``host:port`` (brackets around IPv6) of a bound socket address."""
    return format_host_port(sockaddr[0], sockaddr[1])


async def open_listeners(laddr: str) -> list[trio.SocketListener]:
    """Listen on ``laddr``; ConfigError if it is malformed, KmsError if it cannot be bound."""
    try:
        host, port = parse_listen_address(laddr)
    except ValueError as exc:
        raise ConfigError(f"metrics address: {exc}") from exc
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise KmsError(f"cannot serve metrics on {laddr}: {reason}") from exc


def _plain(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, "text/plain; charset=utf-8", f"{text}\n".encode())


_BAD_REQUEST = _plain(400, "bad request")


class _HttpConnection:
    """One connection: h11's server side between a trio stream and the application."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.received = 0

    async def receive_request(self) -> h11.Request | None:
        """The request, receiving as needed; None if the client closed without asking.

        h11.RemoteProtocolError if the bytes are not HTTP/1.1 or the head is too long. h11
        checks the length of what it holds only while an event is incomplete, so no receive
        takes more than one byte past :data:`MAX_HEAD`: a longer head is never parsed.
        """
        while True:
            event = self.http.next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            # NEED_DATA: nothing else comes before a request
            size = max(1, min(_RECEIVE_SIZE, MAX_HEAD + 1 - self.received))
            data = await self.stream.receive_some(size)
            self.received += len(data)
            self.http.receive_data(data)

    async def send(self, response: HttpResponse, *, head_only: bool = False) -> None:
        """Send ``response`` (no body for ``HEAD``); h11 then wants the connection closed."""
        data = self.http.send(response.to_h11())
        if not head_only and response.body:
            data += self.http.send(h11.Data(data=response.body))
        data += self.http.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def linger(self) -> None:
        """Half-close, then discard what the client still sends until it closes too."""
        await self.stream.send_eof()
        while await self.stream.receive_some(_RECEIVE_SIZE):
            pass


def _request_line(request: h11.Request) -> tuple[str, str] | None:
    """``(method, path)`` of a request (query string dropped), None for a non-path target."""
    target = request.target.decode("ascii")  # h11 lets only visible ASCII through
    if not target.startswith("/"):
        return None
    return request.method.decode("ascii"), target.split("?", 1)[0]


async def _exchange(stream: trio.SocketStream, app: App, app_thread: trio.CapacityLimiter) -> None:
    connection = _HttpConnection(stream)
    try:
        received = await connection.receive_request()
    except h11.RemoteProtocolError:
        request = None
    else:
        if received is None:
            return  # nothing asked, nothing answered
        request = _request_line(received)
    if request is None:
        await connection.send(_BAD_REQUEST)
        await connection.linger()
        return
    method, path = request
    started = time.perf_counter()
    if method not in _METHODS:
        response = attrs.evolve(
            _plain(405, "method not allowed"), headers=(("Allow", ", ".join(_METHODS)),)
        )
    else:
        response = await trio.to_thread.run_sync(app, method, path, limiter=app_thread)
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.debug("HTTP %s %s -> %d (%.2f ms)", method, path, response.status, elapsed_ms)
    await connection.send(response, head_only=method == "HEAD")
    await connection.linger()


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
