"""Dialling real sockets: TCP on 127.0.0.1 port 0 (with Secret Connection) and unix sockets."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from kms.errors import ConfigError
from kms.transport.address import Address, parse_address
from kms.transport.dial import open_connection
from kms.transport.secret_connection import peer_id_from_pubkey
from kms.transport.stream import SecretStream, secret_handshake

KMS_KEY = SigningKey(bytes.fromhex("a1" * 32))
NODE_KEY = SigningKey(bytes.fromhex("b2" * 32))
NODE_ID = peer_id_from_pubkey(bytes(NODE_KEY.verify_key))


async def _secret_echo_node(stream: trio.SocketStream) -> None:
    """A node stand-in: handshake as NODE_KEY, echo one message reversed, close."""
    secure = SecretStream(stream, NODE_KEY)
    async with secure:
        request = await secure.receive_some()
        await secure.send_all(request[::-1])


async def test_tcp_dial_with_secret_connection_and_pinned_id() -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, _secret_echo_node, listeners)
            addr = parse_address(f"tcp://{NODE_ID}@127.0.0.1:{port}")
            raw = await open_connection(addr)
            assert isinstance(raw, trio.SocketStream)
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            secure = await secret_handshake(raw, KMS_KEY, expected_peer_id=addr.peer_id)
            assert secure.peer_id == NODE_ID
            message = bytes(range(256)) * 9  # crosses frame boundaries
            await secure.send_all(message)
            got = bytearray()
            while len(got) < len(message):
                chunk = await secure.receive_some()
                assert chunk
                got += chunk
            assert bytes(got) == message[::-1]
            assert await secure.receive_some() == b""  # node closed at a frame boundary
            await secure.aclose()
            nursery.cancel_scope.cancel()


async def test_tcp_dial_refuses_a_node_with_another_identity() -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def tolerant_node(stream: trio.SocketStream) -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await _secret_echo_node(stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, tolerant_node, listeners)
            pinned = "00" * 20
            raw = await open_connection(parse_address(f"tcp://{pinned}@127.0.0.1:{port}"))
            with pytest.raises(trio.BrokenResourceError) as info:
                await secret_handshake(raw, KMS_KEY, expected_peer_id=pinned)
            assert str(info.value) == (
                f"validator peer ID mismatch! (expected {pinned}, got {NODE_ID})"
            )
            nursery.cancel_scope.cancel()


async def test_tcp_connection_refused_is_an_os_error() -> None:
    with trio.fail_after(10):
        probe = trio.socket.socket()
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens on this port now
        with pytest.raises(OSError):
            await open_connection(parse_address(f"tcp://127.0.0.1:{port}"))


async def test_unix_socket_dial_is_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "privval.sock"
    with trio.fail_after(10):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen()
        listener = trio.SocketListener(sock)

        async def plain_echo(stream: trio.SocketStream) -> None:
            async with stream:
                await stream.send_all((await stream.receive_some())[::-1])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, plain_echo, [listener])
            stream = await open_connection(parse_address(f"unix://{path}"))
            await stream.send_all(b"\x02\x3a\x00")
            assert await stream.receive_some() == b"\x00\x3a\x02"
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_missing_unix_socket_is_an_os_error(tmp_path: Path) -> None:
    with trio.fail_after(10), pytest.raises(OSError):
        await open_connection(parse_address(f"unix://{tmp_path}/absent.sock"))


async def test_noise_scheme_is_refused_clearly() -> None:
    with trio.fail_after(10):
        addr = Address(scheme="noise", host="127.0.0.1", port=26659, peer_id="ab" * 20)
        with pytest.raises(ConfigError, match=r"Noise transport .* not supported yet"):
            await open_connection(addr)


async def test_unknown_scheme_is_refused() -> None:
    with trio.fail_after(10), pytest.raises(ConfigError, match="expected tcp or unix"):
        await open_connection(Address(scheme="udp", host="127.0.0.1", port=1))
