"""HTTP/1.1 POSTs to one etcd endpoint over trio, with h11, on kept-alive connections.

Theory of operation
-------------------
:class:`Endpoint` is one member's client URL. It keeps a few idle connections (each a trio
stream, TLS or not, and its ``h11.Connection``) and lends one to each request: the request
and its body leave in a single ``send_all``, the reply is read to its end, and the
connection goes back to the pool when both sides are done with the cycle. A connection that
saw any error, or a cancellation mid-request, is closed: it is in an unknown state. An idle
connection that became readable (the server closed it, or a member restarted) is dropped
before use, and one broken connection drops every idle one, which likely died the same way.

Every failure leaves this module as one :class:`kms.ha.errors.EtcdError`, at this edge,
chained to what caused it, with ``sent`` telling whether the request may have reached etcd:
false for a failed connect, TLS handshake or send (an incomplete request is never
processed), true once the whole request was handed to the kernel.

No timeouts here: the caller's cancel scope bounds each request (:mod:`kms.ha.client`).
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Sequence

import attrs
import h11
import trio

from kms.ha.errors import EtcdCause, EtcdError
from kms.transport.address import EndpointUrl

__all__ = ["Endpoint", "Reply"]

MAX_IDLE = 4
MAX_REPLY = 8 << 20  # bytes; more is no etcd reply to anything this client asks
_RECEIVE = 65536


@attrs.frozen
class Reply:
    """An HTTP reply: status, content type and the whole body."""

    status: int
    content_type: str
    body: bytes


@attrs.define(eq=False)
class _Conn:
    stream: trio.abc.Stream
    h11: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))

    def looks_dead(self) -> bool:
        """True when the idle socket is readable: closed by the server (or junk arrived)."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        sock = getattr(stream, "socket", None)
        if sock is None:
            return False
        poller = select.poll()  # not select(): no limit on the descriptor's number
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class Endpoint:
    """One etcd member's client URL and its idle connections (see the module docstring)."""

    def __init__(self, url: EndpointUrl, ssl_context: ssl.SSLContext | None = None) -> None:
        if url.scheme == "https" and ssl_context is None:
            raise ValueError(f"{url} needs a TLS context")
        self.url = url
        self.name = str(url)
        self._ssl = ssl_context if url.scheme == "https" else None
        self._host_header = f"{url.host}:{url.port}".encode("ascii")
        self._idle: list[_Conn] = []

    async def post(
        self, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Reply:
        """POST ``body`` (JSON) to ``path``; the reply, whatever its status; EtcdError if none."""
        conn = await self._connection()
        sent = False
        try:
            request = conn.h11.send(
                h11.Request(
                    method="POST",
                    target=path,
                    headers=[
                        (b"host", self._host_header),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode("ascii")),
                        *headers,
                    ],
                )
            )
            data = conn.h11.send(h11.Data(data=body))
            end = conn.h11.send(h11.EndOfMessage())
            await conn.stream.send_all((request or b"") + (data or b"") + (end or b""))
            sent = True
            reply = await self._receive(conn)
        except BaseException as exc:
            await trio.aclose_forcefully(conn.stream)
            self.drop_idle()
            if isinstance(exc, Exception):
                raise self._error(exc, sent) from exc
            raise
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return reply
        await trio.aclose_forcefully(conn.stream)
        return reply

    async def _connection(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.looks_dead():
                return conn
            await trio.aclose_forcefully(conn.stream)
        try:
            tcp = await trio.open_tcp_stream(self.url.host, self.url.port)
        except OSError as exc:
            raise EtcdError(
                EtcdCause.UNREACHABLE, f"cannot connect: {_describe(exc)}", endpoint=self.name
            ) from exc
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        stream: trio.abc.Stream = tcp
        if self._ssl is not None:
            tls = trio.SSLStream(stream, self._ssl, server_hostname=self.url.host)
            try:
                await tls.do_handshake()
            except BaseException as exc:
                await trio.aclose_forcefully(tls)
                if isinstance(exc, Exception):
                    raise self._error(exc, sent=False) from exc
                raise
            stream = tls
        return _Conn(stream)

    async def _receive(self, conn: _Conn) -> Reply:
        status, content_type, body = 0, "", bytearray()
        eof, head = False, b""
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError:
                if eof and (status or b"HTTP/".startswith(head[:5])):
                    raise _Closed(bool(head)) from None  # an HTTP reply cut short
                raise
            if event is h11.NEED_DATA:
                data = bytes(await conn.stream.receive_some(_RECEIVE))
                eof = not data
                if not status and len(head) < 64:
                    head += data
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name == b"content-type":
                        content_type = value.decode("latin-1").lower()
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REPLY:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, content_type, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise _Closed(bool(head) or bool(status))
            # h11.InformationalResponse (100 Continue): keep reading

    def _error(self, exc: Exception, sent: bool) -> EtcdError:
        """The EtcdError for ``exc``, raised while talking to this endpoint."""
        root = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        if isinstance(root, ssl.SSLCertVerificationError):
            cause, why = EtcdCause.TLS, f"server certificate rejected: {root.verify_message}"
        elif isinstance(root, ssl.SSLError):
            cause, why = EtcdCause.TLS, f"TLS failed: {_tls_reason(root)}"
        elif isinstance(exc, _Closed):
            cause, why = EtcdCause.UNREACHABLE, "the connection closed before a full reply"
            if not exc.args[0] and self._ssl is None:
                why += " (not a byte came back: a TLS-only endpoint? then use https://)"
        elif isinstance(exc, _TooLarge):
            cause, why = EtcdCause.PROTOCOL, f"reply larger than {MAX_REPLY} bytes: not etcd?"
        elif isinstance(exc, h11.RemoteProtocolError):
            cause, why = EtcdCause.PROTOCOL, f"not an HTTP/1.1 reply ({exc}): not etcd?"
        elif isinstance(exc, h11.LocalProtocolError):
            cause, why = EtcdCause.PROTOCOL, f"cannot send this request: {exc}"
        elif isinstance(root, OSError):
            cause, why = EtcdCause.UNREACHABLE, f"connection failed: {_describe(root)}"
        else:  # trio.BrokenResourceError / ClosedResourceError without an OSError behind
            cause, why = EtcdCause.UNREACHABLE, f"connection broken ({type(exc).__name__})"
        return EtcdError(cause, why, endpoint=self.name, sent=sent)

    def drop_idle(self) -> None:
        """Forget the idle connections (closing them without blocking)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            _close_now(conn.stream)

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)


class _Closed(Exception):
    """The server closed the connection before the end of its reply."""


class _TooLarge(Exception):
    """The reply exceeds MAX_REPLY."""


def _close_now(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    if sock is not None:
        sock.close()


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _tls_reason(exc: ssl.SSLError) -> str:
    reason = exc.reason or str(exc)
    if reason == "WRONG_VERSION_NUMBER":
        return f"{reason} (the endpoint does not speak TLS: use http://?)"
    if "CERTIFICATE_REQUIRED" in reason or "BAD_CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return f"{reason} (the server refused our client certificate, or we sent none)"
    return reason
