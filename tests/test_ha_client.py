"""The etcd client against a real 3-member etcd cluster, and against things that are not etcd.

Values written or read by the client are checked with the test helpers' own stdlib HTTP
calls to etcd (an independent view), and connections are counted by a chaos proxy.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import trio

from kms.ha.client import EtcdClient, Secret, encode
from kms.ha.errors import EtcdCause, EtcdError
from kms.ha.wire import RangeResult, TxnResult, b64
from kms.transport.address import Address
from tests.support.chaos import chaos_proxy
from tests.support.etcd import EtcdCluster, free_ports

LIMIT = 20.0  # seconds: hard bound of every test's I/O


def fresh_key() -> bytes:
    return f"/tmkms-test/{uuid.uuid4().hex}".encode()


def cas_txn(key: bytes, value: bytes) -> bytes:
    k = b64(key)
    return encode(
        {
            "compare": [{"result": "EQUAL", "target": "CREATE", "key": k, "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": b64(value)}}],
            "failure": [{"request_range": {"key": k}}],
        }
    )


async def blocking(fn: Callable[..., object], *args: object) -> object:
    return await trio.to_thread.run_sync(fn, *args)


async def test_range_txn_and_status(etcd: EtcdCluster) -> None:
    key = fresh_key()
    async with EtcdClient(etcd.endpoints) as client:
        with trio.fail_after(LIMIT):
            assert (await client.range(key)).kvs == ()
            first = await client.txn(cas_txn(key, b"one"))
            second = await client.txn(cas_txn(key, b"two"))
            read = await client.range(key)
            status = await client.status()
        assert first.succeeded and isinstance(first.responses[0], int)
        assert not second.succeeded
        assert isinstance(second.responses[0], RangeResult)
        assert second.responses[0].kvs[0].value == b"one"
        assert read.kvs[0].value == b"one" and read.kvs[0].mod_revision == first.responses[0]
        assert await blocking(etcd.get_value, key.decode()) == b"one"
        leader = await blocking(etcd.leader)
        assert leader is not None
        leader_status = await blocking(etcd.status, leader)
        assert isinstance(leader_status, dict)
        assert status.leader == int(leader_status["header"]["member_id"])


async def test_a_failed_inner_compare_fails_only_its_own_txn(etcd: EtcdCluster) -> None:
    taken, free = fresh_key(), fresh_key()
    await blocking(etcd.put_value, taken.decode(), b"someone else's")
    async with EtcdClient(etcd.endpoints) as client:
        inner = [
            {"request_txn": _decode(cas_txn(taken, b"mine"))},
            {"request_txn": _decode(cas_txn(free, b"mine"))},
        ]
        with trio.fail_after(LIMIT):
            outer = await client.txn(encode({"success": inner}))
        assert outer.succeeded
        lost, won = outer.responses
        assert isinstance(lost, TxnResult) and isinstance(won, TxnResult)
        assert not lost.succeeded and won.succeeded
        assert await blocking(etcd.get_value, taken.decode()) == b"someone else's"
        assert await blocking(etcd.get_value, free.decode()) == b"mine"


def _decode(body: bytes) -> dict[str, object]:
    import json

    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


async def test_connections_are_kept_alive(etcd: EtcdCluster) -> None:
    upstream = Address("tcp", "127.0.0.1", etcd.members[0].client_port)
    async with chaos_proxy(Address("tcp", "127.0.0.1", 0), upstream) as proxy:
        assert proxy.address is not None
        async with EtcdClient([f"http://127.0.0.1:{proxy.address.port}"]) as client:
            with trio.fail_after(LIMIT):
                for _ in range(50):
                    await client.range(b"/tmkms-test/keepalive")
            assert proxy.stats.connections == 1


async def followers_first(etcd: EtcdCluster) -> list[int]:
    """Member indices, the leader last (so losing the first one needs no election)."""
    leader = await blocking(etcd.wait_leader)
    return sorted(range(len(etcd.members)), key=lambda index: index == leader)


async def test_failover_when_the_member_in_use_is_killed(etcd: EtcdCluster) -> None:
    order = await followers_first(etcd)
    async with EtcdClient([etcd.endpoints[i] for i in order]) as client:
        key = fresh_key()
        with trio.fail_after(LIMIT):
            await client.range(key)
            assert client.endpoint == etcd.endpoints[order[0]]
            await blocking(etcd.kill, order[0])
            started = time.monotonic()
            await client.range(key)  # refused on the dead member, answered by the next
            elapsed = time.monotonic() - started
        assert client.endpoint == etcd.endpoints[order[1]]
        assert elapsed < 0.2


async def test_failover_when_the_leader_is_killed(etcd: EtcdCluster) -> None:
    order = await followers_first(etcd)
    leader = order[-1]
    async with EtcdClient([etcd.endpoints[leader]]) as lone, EtcdClient(etcd.endpoints) as client:
        key = fresh_key()
        with trio.fail_after(LIMIT):
            await lone.range(key)
            await blocking(etcd.kill, leader)
            with pytest.raises(EtcdError) as info:
                await lone.range(key)
            started = time.monotonic()
            while True:  # the survivors elect a new leader (a 500 ms election timeout)
                with trio.move_on_after(1.0):
                    try:
                        await client.range(key)
                        break
                    except EtcdError as exc:
                        assert exc.cause in (EtcdCause.UNAVAILABLE, EtcdCause.UNREACHABLE)
                await trio.sleep(0.02)
            elapsed = time.monotonic() - started
        assert info.value.cause is EtcdCause.UNREACHABLE
        assert "cannot connect" in str(info.value) or "closed" in str(info.value)
        assert elapsed < 2.5
        assert client.endpoint != etcd.endpoints[leader]


async def test_a_stopped_member_costs_only_its_share_of_the_deadline(etcd: EtcdCluster) -> None:
    order = await followers_first(etcd)
    async with EtcdClient([etcd.endpoints[i] for i in order]) as client:
        await blocking(etcd.stop, order[0])  # the first choice: connects, never answers
        started = time.monotonic()
        with trio.fail_after(LIMIT), trio.move_on_after(1.0) as scope:
            result = await client.range(fresh_key())
        elapsed = time.monotonic() - started
        assert not scope.cancelled_caught
        assert result.kvs == ()
        assert 0.3 <= elapsed < 0.6, elapsed  # a third of the second, then the next member
        assert client.endpoint == etcd.endpoints[order[1]]


async def test_the_deadline_is_the_callers(etcd: EtcdCluster) -> None:
    async with EtcdClient([etcd.endpoints[0]]) as client:
        await blocking(etcd.stop, 0)
        started = time.monotonic()
        with trio.fail_after(LIMIT), trio.move_on_after(0.3) as scope:
            result = await client.range(fresh_key())
        elapsed = time.monotonic() - started
        assert scope.cancelled_caught, (result, elapsed)
        assert 0.29 <= elapsed < 0.5


async def test_a_member_without_leader_says_so_at_once(etcd: EtcdCluster) -> None:
    await blocking(etcd.lose_quorum, 0)
    async with EtcdClient([etcd.endpoints[0]]) as client:
        with trio.fail_after(LIMIT):
            while True:  # the lone member notices within an election timeout
                status = await blocking(etcd.status, 0)
                if isinstance(status, dict) and not status.get("leader"):
                    break
                await trio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(EtcdError) as info:
                await client.range(fresh_key())
        assert time.monotonic() - started < 0.2
        assert info.value.cause is EtcdCause.UNAVAILABLE
        assert "no leader" in str(info.value)
        assert not info.value.sent


async def test_stale_kept_alive_connection_after_a_restart(etcd: EtcdCluster) -> None:
    async with EtcdClient([etcd.endpoints[2]]) as client:
        key = fresh_key()
        with trio.fail_after(LIMIT):
            await client.range(key)
            await blocking(etcd.kill, 2)
            await blocking(etcd.restart, 2)
            await blocking(etcd.wait_leader)
            result = await client.range(key)  # the pooled connection died with the member
        assert result.kvs == ()


async def _with_server(
    reply: bytes | None, call: Callable[[EtcdClient], Awaitable[object]]
) -> EtcdError:
    """Run ``call`` on a client of a local server that answers ``reply`` (None: closes)."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        if reply is not None:
            await stream.send_all(reply)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0
        )
        port = listeners[0].socket.getsockname()[1]
        client = EtcdClient([f"http://127.0.0.1:{port}"])
        with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
            await call(client)
        nursery.cancel_scope.cancel()
    return info.value


HTML = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 28\r\n\r\n"
    b"<html><body>hi</body></html>"
)


@pytest.mark.parametrize(
    ("reply", "cause", "text"),
    [
        (HTML, EtcdCause.PROTOCOL, "not an etcd v3 JSON gateway: HTTP 200"),
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nNot Found",
            EtcdCause.PROTOCOL,
            "not an etcd v3 JSON gateway: HTTP 404",
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n", EtcdCause.PROTOCOL, "not an HTTP/1.1 reply"),
        (None, EtcdCause.UNREACHABLE, "closed before a full reply"),
    ],
)
async def test_an_endpoint_that_is_not_etcd(
    reply: bytes | None, cause: EtcdCause, text: str
) -> None:
    error = await _with_server(reply, lambda client: client.range(b"/k"))
    assert error.cause is cause
    assert text in str(error)
    assert isinstance(error.__cause__, Exception) or cause is EtcdCause.PROTOCOL


async def test_a_closed_port() -> None:
    (port,) = free_ports(1)
    client = EtcdClient([f"http://127.0.0.1:{port}"])
    with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
        await client.range(b"/k")
    assert info.value.cause is EtcdCause.UNREACHABLE
    assert "cannot connect" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert not info.value.sent


async def test_every_member_failing_names_each() -> None:
    ports = free_ports(2)
    client = EtcdClient([f"http://127.0.0.1:{port}" for port in ports])
    with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
        await client.range(b"/k")
    for port in ports:
        assert f"127.0.0.1:{port}" in str(info.value)


async def test_a_txn_whose_reply_is_lost_is_ambiguous() -> None:
    error = await _with_server(None, lambda client: client.txn(cas_txn(b"/k", b"v")))
    assert error.sent  # the whole request left: it may have been applied


async def test_a_username_for_a_cluster_without_auth_is_a_clear_error(etcd: EtcdCluster) -> None:
    async with EtcdClient(etcd.endpoints, username="kms", password=Secret("pw-4711")) as client:
        with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
            await client.range(fresh_key())
    assert info.value.cause is EtcdCause.AUTH
    assert "authentication is not enabled" in str(info.value)
    assert "etcd has auth disabled" in str(info.value)
    assert "pw-4711" not in str(info.value)
