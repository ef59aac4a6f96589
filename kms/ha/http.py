"""HTTP/1.1 POSTs to one etcd endpoint over trio, on kept-alive connections.

Theory of operation
-------------------
:class:`Endpoint` is one member's client URL. It keeps a few idle connections (each a trio
stream, TLS or not) and lends one to each request: the request and its body leave in a
single ``send_all``, the reply is read to its end, and the connection goes back to the pool
when the reply allows it (HTTP/1.1, no ``Connection: close``, a delimited body, nothing
after it). A connection that saw any error, or a cancellation mid-request, is closed: it is
in an unknown state. An idle connection that became readable (the server closed it, or a
member restarted) is dropped before use, and one broken connection drops every idle one,
which likely died the same way.

The bytes are this module's own, and only what a client of etcd's JSON gateway needs: a
request is one formatted head and its body (:func:`format_request`); a reply is parsed by
:class:`ReplyParser` (sans-IO): a status line, headers, a body delimited by
``Content-Length``, chunked, or the end of the connection (HTTP/1.0), interim 1xx replies
skipped, anything else refused as not HTTP. h11 did this before: on the sign path its
general state machine cost about 130 us of CPU per txn, a third of the client's (figures in
benchmarks/README.md).

Every failure leaves this module as one :class:`kms.ha.errors.EtcdError`, at this edge,
chained to what caused it, with ``sent`` telling whether the request may have reached etcd:
false for a failed connect, TLS handshake or send (an incomplete request is never
processed), true once the whole request was handed to the kernel.

No timeouts here: the caller's cancel scope bounds each request (:mod:`kms.ha.client`).
"""

from __future__ import annotations

import re
import select
import socket
import ssl
from collections.abc import Sequence

import attrs
import trio

from kms.ha.errors import EtcdCause, EtcdError
from kms.transport.address import EndpointUrl

__all__ = ["BadReply", "CutShort", "Endpoint", "Reply", "ReplyParser", "TooLarge", "format_request"]

MAX_IDLE = 4
MAX_REPLY = 8 << 20  # bytes; more is no etcd reply to anything this client asks
MAX_HEAD = 64 << 10  # bytes of a reply's status line and headers
_RECEIVE = 65536
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


@attrs.frozen
class Reply:
    """An HTTP reply: status, content type and the whole body."""

    status: int
    content_type: str
    body: bytes


class BadReply(Exception):
    """The bytes received are not an HTTP/1.1 reply (the message says what is wrong)."""


class CutShort(Exception):
    """The connection ended before the end of the reply; ``args[0]``: any byte came."""


class TooLarge(Exception):
    """The reply exceeds MAX_REPLY (or its head MAX_HEAD)."""


def format_request(
    host: bytes, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """The bytes of ``POST path`` with a JSON ``body``; ValueError for an unsendable field."""
    lines = [
        b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n" % (path.encode("ascii"), host, len(body))
    ]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} cannot be sent as it is")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class ReplyParser:
    """One HTTP/1.x reply, parsed from the bytes fed to it (sans-IO).

    :meth:`feed` takes what the connection gave (``b""``: it ended) and returns the
    :class:`Reply` once complete; it raises :class:`BadReply` for bytes that are not an HTTP
    reply, :class:`CutShort` when the connection ended first, :class:`TooLarge` past the
    limits. ``reusable`` then says whether the connection may carry another request.
    """

    def __init__(self, max_body: int = MAX_REPLY, max_head: int = MAX_HEAD) -> None:
        self._max_body = max_body
        self._max_head = max_head
        self._buf = bytearray()
        self._got_any = False
        self._step = self._head  # what the bytes in the buffer are parsed as next
        self._status = 0
        self._content_type = ""
        self._body = bytearray()
        self._left = 0  # bytes of the body (or of the chunk) still to come
        self._close = False  # the server ends the connection after this reply
        self._waiting = False  # the step needs more bytes
        self.reusable = False

    def feed(self, data: bytes | bytearray) -> Reply | None:
        """Parse ``data`` (``b""``: the connection ended); the reply once it is complete."""
        if not data:
            if self._step == self._until_end:
                return self._done()
            raise CutShort(self._got_any)
        self._got_any = True
        self._buf += data
        while True:  # each step parses from the start of the buffer
            reply = self._step()
            if reply is not None or self._waiting:  # the reply, or more bytes needed
                return reply

    def _head(self) -> Reply | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            start = bytes(self._buf[:5])
            if not b"HTTP/".startswith(start):
                raise BadReply(f"it begins {start!r}")
            if len(self._buf) > self._max_head:
                raise TooLarge(f"a reply head longer than {self._max_head} bytes")
            self._waiting = True
            return None
        if end > self._max_head:
            raise TooLarge(f"a reply head longer than {self._max_head} bytes")
        head = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[: end + 4]
        self._waiting = False
        status_line = _STATUS_LINE.fullmatch(head[0])
        if status_line is None:
            raise BadReply(f"bad status line {head[0][:60]!r}")
        minor, status = status_line.group(1), int(status_line.group(2))
        fields = _fields(head[1:])
        if 100 <= status < 200:
            if status == 101:
                raise BadReply("the server switched protocols")
            return None  # an interim reply: the real one follows
        self._status = status
        self._content_type = fields.get(b"content-type", b"").decode("latin-1").lower()
        self._close = minor == b"0" or b"close" in fields.get(b"connection", b"").lower()
        coding = fields.get(b"transfer-encoding")
        length = fields.get(b"content-length")
        if status in (204, 304):
            return self._done()
        if coding is not None:
            if coding.lower() != b"chunked":
                raise BadReply(f"transfer coding {coding[:40]!r}")
            self._step = self._chunk_size
        elif length is not None:
            if not length.isdigit() or int(length) > self._max_body:
                raise (BadReply if not length.isdigit() else TooLarge)(
                    f"content-length {length[:40]!r}"
                )
            self._left = int(length)
            if not self._left:
                return self._done()
            self._step = self._sized_body
        else:
            self._close = True
            self._step = self._until_end
        return None

    def _sized_body(self) -> Reply | None:
        taken = min(self._left, len(self._buf))
        self._body += self._buf[:taken]
        del self._buf[:taken]
        self._left -= taken
        self._waiting = self._left > 0
        return None if self._left else self._done()

    def _chunk_size(self) -> Reply | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > 1024:
                raise BadReply("a chunk size line longer than 1024 bytes")
            self._waiting = True
            return None
        line = _CHUNK_SIZE.fullmatch(bytes(self._buf[:end]))
        if line is None:
            raise BadReply(f"bad chunk size line {bytes(self._buf[:end])[:40]!r}")
        del self._buf[: end + 2]
        self._waiting = False
        self._left = int(line.group(1), 16)
        if len(self._body) + self._left > self._max_body:
            raise TooLarge(f"a reply body larger than {self._max_body} bytes")
        self._step = self._chunk_data if self._left else self._trailer
        return None

    def _chunk_data(self) -> Reply | None:
        if len(self._buf) < self._left + 2:
            self._waiting = True
            return None
        if self._buf[self._left : self._left + 2] != b"\r\n":
            raise BadReply("a chunk not followed by CRLF")
        self._body += self._buf[: self._left]
        del self._buf[: self._left + 2]
        self._waiting = False
        self._step = self._chunk_size
        return None

    def _trailer(self) -> Reply | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > self._max_head:
                raise TooLarge(f"trailers longer than {self._max_head} bytes")
            self._waiting = True
            return None
        del self._buf[: end + 2]  # a trailer field (ignored), or the empty line that ends
        self._waiting = False
        return self._done() if end == 0 else None

    def _until_end(self) -> Reply | None:
        self._body += self._buf
        self._buf.clear()
        if len(self._body) > self._max_body:
            raise TooLarge(f"a reply body larger than {self._max_body} bytes")
        self._waiting = True
        return None

    def _done(self) -> Reply:
        # bytes after the reply are nothing a client of etcd expects: do not reuse
        self.reusable = not self._close and not self._buf
        self._step = self._after
        self._waiting = True
        return Reply(self._status, self._content_type, bytes(self._body))

    def _after(self) -> Reply | None:
        self.reusable = False
        self._waiting = True
        return None


def _fields(lines: list[bytes]) -> dict[bytes, bytes]:
    """Header fields by lower-case name (repeated ones joined by commas); BadReply if bad."""
    fields: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadReply(f"bad header line {line[:60]!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise BadReply(f"bad header value in {line[:60]!r}")
        name = name.lower()
        if name not in fields:
            fields[name] = value
        elif name == b"content-length":
            if fields[name] != value:
                raise BadReply("two different content-length fields")
        else:
            fields[name] += b", " + value
    return fields


@attrs.define(eq=False)
class _Conn:
    stream: trio.abc.Stream

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
        try:
            request = format_request(self._host_header, path, body, headers)
        except ValueError as exc:
            why = f"cannot send this request: {exc}"
            raise EtcdError(EtcdCause.PROTOCOL, why, endpoint=self.name) from exc
        conn = await self._connection()
        sent = False
        try:
            await conn.stream.send_all(request)
            sent = True
            parser = ReplyParser()
            while (reply := parser.feed(await conn.stream.receive_some(_RECEIVE))) is None:
                pass
        except BaseException as exc:
            await trio.aclose_forcefully(conn.stream)
            self.drop_idle()
            if isinstance(exc, Exception):
                raise self._error(exc, sent) from exc
            raise
        if parser.reusable and len(self._idle) < MAX_IDLE:
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

    def _error(self, exc: Exception, sent: bool) -> EtcdError:
        """The EtcdError for ``exc``, raised while talking to this endpoint."""
        root = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        if isinstance(root, ssl.SSLCertVerificationError):
            cause, why = EtcdCause.TLS, f"server certificate rejected: {root.verify_message}"
        elif isinstance(root, ssl.SSLError):
            cause, why = EtcdCause.TLS, f"TLS failed: {_tls_reason(root)}"
        elif isinstance(exc, CutShort):
            cause, why = EtcdCause.UNREACHABLE, "the connection closed before a full reply"
            if not exc.args[0] and self._ssl is None:
                why += " (not a byte came back: a TLS-only endpoint? then use https://)"
        elif isinstance(exc, TooLarge):
            cause, why = EtcdCause.PROTOCOL, f"reply too large ({exc}): not etcd?"
        elif isinstance(exc, BadReply):
            cause, why = EtcdCause.PROTOCOL, f"not an HTTP/1.1 reply ({exc}): not etcd?"
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
