"""The etcd client's own HTTP/1.1 bytes: the request it formats, the replies it parses.

:func:`kms.ha.http.format_request` and :class:`kms.ha.http.ReplyParser` replaced h11 on the
sign path (a third of the client's CPU per txn). h11 stays the oracle here: every request
is parsed by h11's server side, and replies that h11's server side writes (chunked or not,
interim replies, random bodies and header fields) are parsed the same, however the bytes are
split. Then the replies a client of etcd must refuse, or see cut short, byte by byte.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.ha.http import BadReply, CutShort, Reply, ReplyParser, TooLarge, format_request

HOST = b"127.0.0.1:2379"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
OK_BODY = b'{"header":{}}'


class Fed(ReplyParser):
    """A parser that keeps the reply it returned (None: not complete)."""

    reply: Reply | None = None


def parse(data: bytes, *, sizes: list[int] | None = None, end: bool = False) -> Fed:
    """A parser fed ``data`` in pieces of ``sizes`` (default: whole); ``end``: then the EOF.

    Feeding stops at the piece that completes the reply.
    """
    parser = Fed()
    pieces, at = [], 0
    for size in sizes or [len(data)]:
        pieces.append(data[at : at + size])
        at += size
    pieces.append(data[at:])
    for piece in [p for p in pieces if p] + ([b""] if end else []):
        parser.reply = parser.feed(piece)
        if parser.reply is not None:
            break
    return parser


def reply_of(parser: Fed) -> Reply:
    assert parser.reply is not None
    return parser.reply


def test_a_request_is_one_head_and_its_body() -> None:
    data = format_request(HOST, "/v3/kv/txn", b"{}", [(b"grpc-metadata-hasleader", b"true")])
    assert data == (
        b"POST /v3/kv/txn HTTP/1.1\r\nhost: 127.0.0.1:2379\r\n"
        b"content-type: application/json\r\ncontent-length: 2\r\n"
        b"grpc-metadata-hasleader: true\r\n\r\n{}"
    )


@given(
    st.binary(max_size=300),
    st.lists(
        st.tuples(
            st.from_regex(rb"[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(
                lambda name: name not in (b"host", b"content-type", b"content-length")
            ),
            st.from_regex(rb"[\x21-\x7e]([\x20-\x7e]{0,40}[\x21-\x7e])?", fullmatch=True),
        ),
        max_size=4,
    ),
)
def test_h11_reads_every_request_as_sent(body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    server = h11.Connection(h11.SERVER)
    server.receive_data(format_request(HOST, "/v3/kv/range", body, headers))
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert request.method == b"POST" and request.target == b"/v3/kv/range"
    assert (b"content-length", str(len(body)).encode()) in request.headers
    for header in headers:
        assert header in request.headers
    received = b""
    while not isinstance(event := server.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        received += event.data
    assert received == body


@pytest.mark.parametrize(
    "header",
    [(b"authorization", b"token\r\nx-injected: 1"), (b"bad name", b"v"), (b"x", b"a\nb")],
)
def test_a_field_that_cannot_be_sent_is_refused(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        format_request(HOST, "/v3/kv/range", b"{}", [header])


def h11_reply(
    status: int, body: bytes, *, chunks: list[int] | None, interim: bool, close: bool
) -> bytes:
    """What h11's server side writes for this reply (chunked when ``chunks`` is given)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(format_request(HOST, "/v3/kv/txn", b"{}"))
    assert isinstance(server.next_event(), h11.Request)
    server.next_event()  # the body
    out = b""
    if interim:
        out += server.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
    headers = [(b"content-type", b"application/json")]
    if chunks is None:
        headers.append((b"content-length", str(len(body)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    out += server.send(h11.Response(status_code=status, headers=headers)) or b""
    at = 0
    for size in chunks or [len(body)]:
        if body[at : at + size]:
            out += server.send(h11.Data(data=body[at : at + size])) or b""
        at += size
    if body[at:]:
        out += server.send(h11.Data(data=body[at:])) or b""
    out += server.send(h11.EndOfMessage()) or b""
    return out


@st.composite
def h11_replies(draw: st.DrawFn) -> tuple[bytes, Reply, bool]:
    """A reply h11's server side wrote, what it says, and whether it keeps the connection."""
    status = draw(st.sampled_from([200, 400, 404, 500, 503]))
    body = draw(st.binary(max_size=2000))
    close = draw(st.booleans())
    chunks = draw(st.none() | st.lists(st.integers(1, 700), max_size=5))
    data = h11_reply(status, body, chunks=chunks, interim=draw(st.booleans()), close=close)
    return data, Reply(status, "application/json", body), not close


@given(h11_replies(), st.lists(st.integers(1, 400), max_size=8))
def test_every_reply_h11_writes_is_read_however_it_is_split(
    written: tuple[bytes, Reply, bool], sizes: list[int]
) -> None:
    data, expected, reusable = written
    parser = parse(data, sizes=sizes)
    assert parser.reply == expected
    assert parser.reusable is reusable


def test_a_chunked_reply_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: Application/JSON\r\n\r\n"
        b"5;name=value\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    for split in range(1, len(data)):
        parser = parse(data, sizes=[split])
        assert reply_of(parser) == Reply(200, "application/json", b"hello world!")
        assert parser.reusable


def test_http_1_0_reads_to_the_end_and_is_not_reused() -> None:
    # Go's TLS server answering plain HTTP: HTTP/1.0, no length, then it closes
    data = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    parser = parse(data, end=True)
    assert reply_of(parser).body.startswith(b"Client sent an HTTP request")
    assert not parser.reusable


@pytest.mark.parametrize(
    "data",
    [
        OK + OK_BODY + b"HTTP/1.1 200 OK\r\n",  # bytes after the reply
        OK.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive, close\r\n\r\n") + OK_BODY,
        OK.replace(b"HTTP/1.1", b"HTTP/1.0") + OK_BODY,
    ],
)
def test_a_connection_is_reused_only_after_a_clean_http_1_1_reply(data: bytes) -> None:
    parser = parse(data)
    assert reply_of(parser).body == OK_BODY
    assert not parser.reusable


def test_no_body_after_204_and_an_empty_body() -> None:
    assert reply_of(parse(b"HTTP/1.1 204 No Content\r\n\r\n")) == Reply(204, "", b"")
    assert reply_of(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).body == b""


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "it begins b'SSH-2'"),
        (b"SS", "it begins b'SS'"),  # as soon as the first bytes cannot be HTTP
        (b"<html>", "it begins"),
        (b"HTTP/2 200\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nbad name: v\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n folded: v\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n", "bad header value"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "two different"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer coding"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "not followed"),
    ],
)
def test_bytes_that_are_not_an_http_reply(data: bytes, why: str) -> None:
    with pytest.raises(BadReply, match=why):
        parse(data)


def test_the_same_content_length_twice_is_fine() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi"
    assert reply_of(parse(data)).body == b"hi"


@pytest.mark.parametrize(
    "data",
    [
        OK + OK_BODY,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nt: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK + OK_BODY,
    ],
)
def test_a_reply_cut_anywhere_is_cut_short(data: bytes) -> None:
    for cut in range(len(data)):
        with pytest.raises(CutShort) as info:
            parse(data[:cut], end=True)
        assert info.value.args[0] is (cut > 0)  # whether any byte came back


def test_limits() -> None:
    with pytest.raises(TooLarge):
        ReplyParser(max_body=10).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n"
    with pytest.raises(TooLarge):
        ReplyParser(max_body=10).feed(chunked)
    until_end = ReplyParser(max_body=10)
    until_end.feed(b"HTTP/1.0 200 OK\r\n\r\n12345")
    with pytest.raises(TooLarge):
        until_end.feed(b"678901")
    with pytest.raises(TooLarge):
        ReplyParser(max_head=100).feed(b"HTTP/1.1 200 OK\r\nx: " + b"y" * 100)
    with pytest.raises(TooLarge):
        ReplyParser(max_head=100).feed(b"HTTP/1.1 200 OK\r\nx: " + b"y" * 100 + b"\r\n\r\n")
