"""The local state is saved only after the check-and-set is won, never beside it.

Saving the local state concurrently with the etcd check-and-set looks harmless ("the tracker
signs only after both completed") but is not: a local state file that moved without a won
check-and-set is trusted after a restart. The tracker signs a request equal to its state
without asking the store (the same vote asked again after a restart, say), and first
contact leaves a local state that conflicts with the watermark (same step, another block)
as it is. So a host whose local save finished while its check-and-set lost to another
host's block, and which then restarted, would sign its own block at the step the other
host signed: a double sign. These tests pin the order the sign path relies on: a refused
check-and-set (lost to another host, or etcd unreachable) leaves the state file as it was,
also when the slow part of the local save (the new state written and fsync'd beside the
state file, :meth:`kms.chain.local.LocalStore.prepare`) ran beside the check-and-set, and
the host, restarted, refuses that step again.

Real etcd cluster (tests/conftest.py), real LocalStore over a StateFile, real trackers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import nacl.signing
import pytest
import trio

from kms.chain.local import LocalStore
from kms.chain.state import BlockRef, SignState
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker, SignRequest
from kms.chain.writer import StateWriter
from kms.errors import SigningRefused
from kms.ha.cas import ReconcileAction
from kms.ha.client import EtcdClient
from kms.ha.errors import HaRefused
from kms.ha.store import SharedWatermarkStore
from providers.softsign import Ed25519SoftSigner
from tests.support.etcd import EtcdCluster
from tests.support.watermarks import init_watermarks

X = BlockRef(b"\xaa" * 32, 1, b"\x0a" * 32)
Y = BlockRef(b"\xbb" * 32, 1, b"\x0b" * 32)
BEFORE = SignState(4, 0, 2, X)  # both hosts signed the last height
STEP = SignState(5, 0, 1, Y)  # host B wins the prevote for Y; host A is asked for X
LIMIT = 30.0
PREFIX = "/tmkms-order/"


class Host:
    """One KMS host's chain: its state file, a store over etcd (or a dead port), a tracker."""

    def __init__(self, path: Path, chain: str, name: str, endpoints: list[str]) -> None:
        self.file = StateFile(path)
        self.writer = StateWriter()
        self.client = EtcdClient(endpoints)
        self.store = SharedWatermarkStore(
            LocalStore(self.file, self.writer, label=name),
            chain_id=chain,
            client=self.client,
            host=name,
            prefix=PREFIX,
            timeout=0.5,
        )
        signer = Ed25519SoftSigner(nacl.signing.SigningKey(b"\x01" * 32))
        self.tracker = ChainTracker(chain, self.store, signer)

    async def start(self) -> None:
        await self.tracker.open()

    async def sign(self, state: SignState) -> str:
        """``signed``, or the refusal's class name."""
        kind: Literal["vote", "proposal"] = "proposal" if state.step == 0 else "vote"
        sign_bytes = b"%s %d/%d/%d %s" % (
            kind.encode(),
            state.height,
            state.round,
            state.step,
            state.block.hash,
        )
        request = SignRequest(
            kind, state.height, state.round, state.step, state.block, sign_bytes, (1, 0)
        )
        try:
            await self.tracker.sign(request)
        except SigningRefused as exc:
            return type(exc).__name__
        return "signed"


@pytest.fixture
async def hosts() -> AsyncIterator[list[Host]]:
    made: list[Host] = []
    yield made
    for host in made:
        await host.client.aclose()


def new_host(made: list[Host], path: Path, chain: str, name: str, endpoints: list[str]) -> Host:
    made.append(Host(path, chain, name, endpoints))
    return made[-1]


async def test_a_check_and_set_lost_leaves_the_state_file_and_a_restart_refuses_again(
    etcd: EtcdCluster, tmp_path: Path, hosts: list[Host]
) -> None:
    chain = f"chain-{uuid.uuid4().hex[:12]}"
    await init_watermarks(etcd, PREFIX, [chain])
    with trio.fail_after(LIMIT):
        b = new_host(hosts, tmp_path / "b.json", chain, "kms-b", etcd.endpoints)
        a = new_host(hosts, tmp_path / "a.json", chain, "kms-a", etcd.endpoints)
        for host in (a, b):
            await host.start()
            assert await host.sign(BEFORE) == "signed"
        assert await b.sign(STEP) == "signed"
        asked = SignState(STEP.height, STEP.round, STEP.step, X)
        prepared = a.writer.prepared_writes
        assert await a.sign(asked) == "HaDoubleSignRefused"  # lost to B's Y
        assert a.writer.prepared_writes == prepared + 1  # X was written beside the state file
        left = a.file.load()

        # host A restarts and the node asks for X again: never signed
        again = new_host(hosts, tmp_path / "a.json", chain, "kms-a", etcd.endpoints)
        await again.start()
        reconciled = await again.store.reconcile()
        assert await again.sign(asked) == "HaDoubleSignRefused"
    # why: the state file never held the refused step, so first contact adopted B's
    assert left == BEFORE
    assert reconciled.action is ReconcileAction.ADOPT
    assert again.file.load() == STEP


def lose_quorum_but_member_0(etcd: EtcdCluster) -> None:
    """Stop members 1 and 2; return once member 0 says it has no leader."""
    etcd.lose_quorum(keep=0)
    while (etcd.status(0) or {}).get("leader", "0") != "0":
        time.sleep(0.05)


async def test_etcd_without_quorum_leaves_the_state_file_as_it_was(
    etcd: EtcdCluster, tmp_path: Path, hosts: list[Host]
) -> None:
    chain = f"chain-{uuid.uuid4().hex[:12]}"
    await init_watermarks(etcd, PREFIX, [chain])
    with trio.fail_after(LIMIT):
        # A talks to member 0 only, which etcd keeps running: a txn it refuses for want of
        # a leader is never applied later (one left in a stopped member's socket could be)
        a = new_host(hosts, tmp_path / "a.json", chain, "kms-a", etcd.endpoints[:1])
        await a.start()
        assert await a.sign(BEFORE) == "signed"
        await trio.to_thread.run_sync(lose_quorum_but_member_0, etcd)
        asked = SignState(STEP.height, STEP.round, STEP.step, X)
        prepared = a.writer.prepared_writes
        assert await a.sign(asked) == "HaRefused"  # no leader: no answer within the timeout
        assert a.writer.prepared_writes == prepared + 1
        left = a.file.load()
        # quorum back, host B signs Y at that step; A, restarted, is asked for X again
        await trio.to_thread.run_sync(etcd.regain_quorum)
        await trio.to_thread.run_sync(etcd.wait_leader)
        b = new_host(hosts, tmp_path / "b.json", chain, "kms-b", etcd.endpoints)
        await b.start()
        assert await b.sign(STEP) == "signed"
        back = new_host(hosts, tmp_path / "a.json", chain, "kms-a", etcd.endpoints)
        await back.start()
        assert await back.sign(asked) == "HaDoubleSignRefused"
    assert left == BEFORE  # why: A restarted from the step before, checked X against etcd
    assert back.file.load() == STEP  # first contact adopted B's step, then refused X


async def test_a_won_check_and_set_is_followed_by_the_local_save(
    etcd: EtcdCluster, tmp_path: Path, hosts: list[Host]
) -> None:
    chain = f"chain-{uuid.uuid4().hex[:12]}"
    await init_watermarks(etcd, PREFIX, [chain])
    with trio.fail_after(LIMIT):
        a = new_host(hosts, tmp_path / "a.json", chain, "kms-a", etcd.endpoints)
        await a.start()
        for state in (BEFORE, SignState(5, 0, 1, X), SignState(5, 0, 2, X)):
            assert await a.sign(state) == "signed"
            assert a.file.load() == state
        with pytest.raises(HaRefused):
            await a.store.save(SignState(5, 0, 1, Y))  # behind the watermark: refused
        assert a.file.load() == SignState(5, 0, 2, X)
