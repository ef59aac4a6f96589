"""The operators' side of the watermark (``tmkms state show|import|set``) against real etcd."""

from __future__ import annotations

import uuid

import trio

from kms.chain.state import BlockRef, SignState
from kms.ha.admin import RaiseOutcome, raise_watermark, read_watermark
from kms.ha.client import EtcdClient
from kms.ha.watermark import parse_watermark, watermark_key
from tests.support.etcd import EtcdCluster

LIMIT = 20.0
A = BlockRef(b"\xaa" * 32, 1, b"\x0a" * 32)
B = BlockRef(b"\xbb" * 32, 1, b"\x0b" * 32)


def key() -> bytes:
    return watermark_key("/tmkms-admin/", uuid.uuid4().hex)


async def value_of(etcd: EtcdCluster, k: bytes) -> bytes | None:
    value = await trio.to_thread.run_sync(etcd.get_value, k.decode())
    assert value is None or isinstance(value, bytes)
    return value


async def test_show_a_missing_then_a_raised_watermark(
    etcd: EtcdCluster, client: EtcdClient
) -> None:
    k = key()
    with trio.fail_after(LIMIT):
        assert (await read_watermark(client, k)).missing
        raised = await raise_watermark(client, k, SignState(7, 0, 2, A), "ops-host")
        shown = await read_watermark(client, k)
    assert raised.outcome is RaiseOutcome.RAISED
    assert shown.watermark is not None
    assert shown.watermark.state == SignState(7, 0, 2, A)
    assert shown.watermark.host == "ops-host"
    assert shown == raised.stored
    assert parse_watermark(await value_of(etcd, k) or b"") == shown.watermark


async def test_never_lowered_unless_forced(etcd: EtcdCluster, client: EtcdClient) -> None:
    k = key()
    with trio.fail_after(LIMIT):
        await raise_watermark(client, k, SignState(10, 1, 1, A), "a")
        lower = await raise_watermark(client, k, SignState(9, 5, 2, B), "b")
        same = await raise_watermark(client, k, SignState(10, 1, 1, B), "b")
        assert lower.outcome is same.outcome is RaiseOutcome.UNCHANGED
        assert parse_watermark(await value_of(etcd, k) or b"").state == SignState(10, 1, 1, A)
        higher = await raise_watermark(client, k, SignState(10, 1, 2, B), "b")
        assert higher.outcome is RaiseOutcome.RAISED
        forced = await raise_watermark(client, k, SignState(3, 0, 0, A), "ops", force=True)
        assert forced.outcome is RaiseOutcome.RAISED
    assert parse_watermark(await value_of(etcd, k) or b"").state == SignState(3, 0, 0, A)


async def test_a_malformed_value_is_left_alone_unless_forced(
    etcd: EtcdCluster, client: EtcdClient
) -> None:
    k = key()
    await trio.to_thread.run_sync(etcd.put_value, k.decode(), b"not a watermark")
    with trio.fail_after(LIMIT):
        shown = await read_watermark(client, k)
        left = await raise_watermark(client, k, SignState(4, 0, 1, A), "ops")
        assert shown.problem is not None and left.outcome is RaiseOutcome.MALFORMED
        assert await value_of(etcd, k) == b"not a watermark"
        forced = await raise_watermark(client, k, SignState(4, 0, 1, A), "ops", force=True)
    assert forced.outcome is RaiseOutcome.RAISED
    assert parse_watermark(await value_of(etcd, k) or b"").state == SignState(4, 0, 1, A)


async def test_concurrent_raises_end_at_the_highest(etcd: EtcdCluster, client: EtcdClient) -> None:
    k = key()
    states = [SignState(h, 0, 1, A) for h in range(1, 21)]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            for state in states:
                nursery.start_soon(raise_watermark, client, k, state, f"h{state.height}")
    assert parse_watermark(await value_of(etcd, k) or b"").state == states[-1]
