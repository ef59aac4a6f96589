"""Group commit across chains, against a real 3-member etcd cluster.

The cluster runs with ``--max-txn-ops=8`` so that the batcher meets etcd's limit on ops
per txn for real (the default, 128, is above the batcher's own cap of 64).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from kms.chain.state import BlockRef, SignState
from kms.config.etcd import EtcdSettings
from kms.ha.batch import Pending, TxnBatcher
from kms.ha.cas import CasOp, ReadOp
from kms.ha.client import EtcdClient
from kms.ha.shared import SharedWatermarks
from kms.ha.watermark import format_watermark, parse_watermark
from kms.ha.wire import RangeResult, TxnResult
from tests.support.etcd import EtcdCluster, LocalFile, module_cluster
from tests.support.watermarks import init_watermarks

LIMIT = 30.0
MAX_TXN_OPS = 8
PREFIX = "/tmkms-batch/"
BLOCK = BlockRef(b"\xcc" * 32, 1, b"\x0c" * 32)


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    yield from module_cluster(tmp_path_factory, extra_args=[f"--max-txn-ops={MAX_TXN_OPS}"])


def fresh(n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"chain-{run}-{i}" for i in range(n)]


def create_op(chain: str, height: int = 1) -> CasOp:
    nonce = uuid.uuid4().hex[:24]
    value = format_watermark(SignState(height, 0, 1, BLOCK), "kms-a", nonce)
    return CasOp(f"{PREFIX}{chain}".encode(), 0, value, nonce)


async def run_together(batcher: TxnBatcher, ops: list[CasOp | ReadOp]) -> list[Pending]:
    """Queue ``ops`` behind a flush in flight, so the next flush carries them all."""
    pendings = [Pending(op) for op in ops]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run, Pending(ReadOp(b"/tmkms-batch/blocker")))
        while not batcher._flushing:
            await trio.lowlevel.checkpoint()  # until the blocker's flush is in flight
        for pending in pendings:
            nursery.start_soon(batcher.run, pending)
    return pendings


async def test_one_failing_compare_does_not_fail_the_others(
    etcd: EtcdCluster, client: EtcdClient
) -> None:
    chains = fresh(5)
    await trio.to_thread.run_sync(etcd.put_value, f"{PREFIX}{chains[2]}", b"taken")
    batcher = TxnBatcher(client)
    with trio.fail_after(LIMIT):
        pendings = await run_together(batcher, [create_op(chain) for chain in chains])
    assert batcher.flushes == 2 and batcher.flushed_ops == 6  # the blocker, then all five
    for index, pending in enumerate(pendings):
        result = pending.result
        assert isinstance(result, TxnResult)
        assert result.succeeded is (index != 2)
    failed = pendings[2].result
    assert isinstance(failed, TxnResult) and isinstance(failed.responses[0], RangeResult)
    assert failed.responses[0].kvs[0].value == b"taken"
    for index, chain in enumerate(chains):
        value = await trio.to_thread.run_sync(etcd.get_value, f"{PREFIX}{chain}")
        assert (value == b"taken") is (index == 2)


async def test_a_key_goes_once_per_flush_and_flushes_are_capped(client: EtcdClient) -> None:
    chains = fresh(7)
    batcher = TxnBatcher(client, max_ops=4)
    ops = [create_op(chain) for chain in chains]
    ops.append(create_op(chains[0]))  # the same key again: etcd refuses it twice in one txn
    with trio.fail_after(LIMIT):
        pendings = await run_together(batcher, list(ops))
    assert batcher.flushed_ops == 1 + 8
    assert batcher.flushes in (3, 4)  # the blocker, then 4 + 4 (or 4 + 3 + 1: the twins)
    assert batcher.largest_flush == 4
    assert all(p.error is None for p in pendings)
    first, again = pendings[0].result, pendings[-1].result
    assert isinstance(first, TxnResult) and isinstance(again, TxnResult)
    assert first.succeeded != again.succeeded  # in two flushes: one created it, one lost


async def test_too_many_ops_for_the_cluster_splits_the_flush(client: EtcdClient) -> None:
    batcher = TxnBatcher(client, max_ops=64)
    with trio.fail_after(LIMIT):
        pendings = await run_together(batcher, [create_op(c) for c in fresh(20)])
    assert all(p.error is None for p in pendings)
    assert all(isinstance(p.result, TxnResult) and p.result.succeeded for p in pendings)
    assert batcher._max_ops < MAX_TXN_OPS  # etcd counts the nested ops too
    flushes = batcher.flushes
    with trio.fail_after(LIMIT):  # the next flushes fit at once
        again = await run_together(batcher, [create_op(c) for c in fresh(20)])
    assert all(p.error is None for p in again)
    assert batcher.flushes - flushes == 1 + -(-20 // batcher._max_ops)


async def test_many_chains_sign_at_once_through_one_hub(etcd: EtcdCluster, tmp_path: Path) -> None:
    chains = fresh(30)
    await init_watermarks(etcd, PREFIX, chains)
    settings = EtcdSettings(etcd.endpoints, prefix=PREFIX, host="kms-a", timeout=2.0)
    hub = SharedWatermarks(settings)
    stores = [hub.store(chain, LocalFile(tmp_path / f"{chain}.json")) for chain in chains]
    # another host moved one chain's watermark behind this host's back
    moved = chains[7]
    outcomes: dict[str, str] = {}

    async def sign(index: int, height: int) -> None:
        try:
            await stores[index].save(SignState(height, 0, 1, BLOCK))
            outcomes[chains[index]] = "won"
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            outcomes[chains[index]] = repr(exc)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            for index in range(len(chains)):
                nursery.start_soon(sign, index, 1)
        assert set(outcomes.values()) == {"won"}, outcomes
        other = format_watermark(SignState(2, 0, 0, BLOCK), "kms-b", "b" * 24)
        await trio.to_thread.run_sync(etcd.put_value, f"{PREFIX}{moved}", other)
        flushes, ops = hub.batcher.flushes, hub.batcher.flushed_ops
        async with trio.open_nursery() as nursery:
            for index in range(len(chains)):
                nursery.start_soon(sign, index, 3)
    assert set(outcomes.values()) == {"won"}, outcomes
    batched = hub.batcher.flushed_ops - ops
    assert batched == len(chains) + 1  # one op each, and the moved chain's retry
    assert hub.batcher.flushes - flushes < batched // 2  # shared round trips
    assert stores[7].counters["lost_compares"] == 1
    for chain in chains:
        value = await trio.to_thread.run_sync(etcd.get_value, f"{PREFIX}{chain}")
        assert parse_watermark(value or b"").state == SignState(3, 0, 1, BLOCK)
    await hub.aclose()
