"""A watermark missing from etcd, or gone back in time, is refused, never written.

Found by the end-to-end suite (tests/test_ha_e2e.py): host A wins a step over block X and
signs it, host B is refused; then the chain's key disappears from etcd (an operator's
``etcdctl del``, another tool on the prefix, a cluster restored from an older backup). B,
asked again for its own block Y at the very step A signed, read "no key", took it for a
new chain, created the key and signed Y: a double sign, without an ERROR line. A missing
key means the watermark was never created or was lost, and nothing in etcd tells what
another host signed, so the check-and-set refuses (cause missing) until an operator
creates it (`tmkms state init`, or `state set` above every host's state). The spec let
first contact create it from the local state; that was the same hole for a KMS
*restarted* after etcd lost its data: its local state may be behind what another host
signed. The same hole opened when etcd was restored from an older backup (its revisions
go back with it): B found an older watermark, below the step A signed, and signed its own
block there. etcd's revisions only grow, so each store keeps the highest revision of its
key it has seen, and a key found below it is refused ("went back in time").

Here the check-and-set machine is driven by hand, then two stores are run against the real
etcd cluster of tests/conftest.py (the end-to-end check is in tests/test_ha_e2e.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from kms.chain.state import BlockRef, SignState
from kms.ha.admin import RaiseOutcome, create_watermark
from kms.ha.cas import MISSING, CasMachine, CasOp, ReadOp, Verdict, went_back
from kms.ha.client import EtcdClient
from kms.ha.errors import HaRefused
from kms.ha.store import SharedWatermarkStore
from kms.ha.watermark import Stored, Watermark, format_watermark, parse_watermark
from kms.ha.wire import KeyValue, RangeResult, TxnResult
from tests.support.etcd import EtcdCluster, LocalFile, b64

KEY = b"/tmkms-safety/chain"
X = BlockRef(b"\xaa" * 32, 1, b"\x0a" * 32)
Y = BlockRef(b"\xbb" * 32, 1, b"\x0b" * 32)
LIMIT = 30.0

NOTHING = RangeResult(10, ())


def stored_by_other(state: SignState, revision: int) -> Stored:
    """A remembered watermark another host wrote."""
    return Stored(revision, Watermark(state, "kms-a", "ab" * 12), fresh=False)


# ---------------------------------------------------------------- the machine, by hand


def test_a_missing_key_is_never_created_by_the_sign_path() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, Y), "kms-b")  # floor 0: nothing seen yet
    assert isinstance(machine.op, ReadOp)
    machine.answered(NOTHING)
    assert machine.op is None and machine.decision is not None
    assert machine.decision.verdict is Verdict.MALFORMED
    assert machine.decision.stored.problem == MISSING


def test_once_seen_a_missing_key_is_refused_not_created() -> None:
    """B remembers A's watermark at 5/0/1 over X and is asked for Y there: the guess
    refuses, so B reads; the key is gone: malformed, decided without any write."""
    machine = CasMachine(
        KEY,
        SignState(5, 0, 1, Y),
        "kms-b",
        known=stored_by_other(SignState(5, 0, 1, X), 40),
        floor=40,
    )
    assert isinstance(machine.op, ReadOp)
    machine.answered(NOTHING)
    assert machine.op is None and machine.decision is not None
    assert machine.decision.verdict is Verdict.MALFORMED
    assert machine.decision.stored.problem == MISSING


def test_a_key_deleted_under_a_compare_is_refused() -> None:
    """The txn's compare fails because the key was deleted: its failure branch shows no
    key, which is a vanished watermark too, not a lost compare to retry as a create."""
    machine = CasMachine(
        KEY,
        SignState(6, 0, 0, X),
        "kms-b",
        known=stored_by_other(SignState(5, 0, 2, X), 41),
        floor=41,
    )
    assert isinstance(machine.op, CasOp) and machine.op.revision == 41
    machine.answered(TxnResult(False, 50, (NOTHING,)))
    assert machine.decision is not None and machine.decision.verdict is Verdict.MALFORMED


def older(state: SignState, revision: int) -> RangeResult:
    """A range showing ``state`` (written by kms-a) at ``revision``."""
    value = format_watermark(state, "kms-a", "cd" * 12)
    return RangeResult(revision, (KeyValue(KEY, value, 1, revision, 1),))


def test_a_key_found_older_than_seen_before_is_refused() -> None:
    """etcd restored from an older backup: the key is there, at a revision below one this
    store saw, with a watermark below the step another host signed. Not a write."""
    machine = CasMachine(
        KEY,
        SignState(9, 0, 1, Y),
        "kms-b",
        known=stored_by_other(SignState(9, 0, 1, X), 70),
        floor=70,
    )
    machine.answered(older(SignState(7, 0, 2, X), 55))
    assert machine.decision is not None and machine.decision.verdict is Verdict.MALFORMED
    assert machine.decision.stored.problem == went_back(55, 70)
    assert "restored from an older backup" in went_back(55, 70)


def test_a_present_key_at_or_above_the_floor_still_goes_through_the_rule() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 2, X), "kms-b", floor=42)
    machine.answered(older(SignState(5, 0, 1, X), 42))
    assert isinstance(machine.op, CasOp) and machine.op.revision == 42
    machine.answered(TxnResult(True, 43, (43,)))
    assert machine.decision is not None and machine.decision.verdict is Verdict.WON
    assert machine.highest == 43  # the store's next floor


def test_the_highest_revision_met_is_the_next_floor() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 2, Y), "kms-b", floor=10)
    machine.answered(older(SignState(5, 0, 1, X), 42))  # the rule refuses Y: lost
    assert machine.decision is not None and machine.decision.verdict is Verdict.LOST
    assert machine.highest == 42


# ---------------------------------------------------------------- two stores on real etcd


@pytest.fixture
async def clients(etcd: EtcdCluster) -> AsyncIterator[list[EtcdClient]]:
    made = [EtcdClient(etcd.endpoints), EtcdClient(etcd.endpoints[::-1])]
    yield made
    for client in made:
        await client.aclose()


def store(local: LocalFile, client: EtcdClient, host: str, chain: str) -> SharedWatermarkStore:
    return SharedWatermarkStore(
        local,
        chain_id=chain,
        client=client,
        host=host,
        prefix="/tmkms-safety/",
    )


async def outcome(s: SharedWatermarkStore, state: SignState) -> str:
    try:
        await s.save(state)
    except HaRefused as exc:
        return exc.reason
    return "won"


async def test_a_deleted_watermark_is_never_recreated_by_a_running_store(
    etcd: EtcdCluster, clients: list[EtcdClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain = f"chain-{uuid.uuid4().hex[:8]}"
    key = f"/tmkms-safety/{chain}"
    a_local, b_local = LocalFile(tmp_path / "a.json"), LocalFile(tmp_path / "b.json")
    a = store(a_local, clients[0], "kms-a", chain)
    b = store(b_local, clients[1], "kms-b", chain)
    with trio.fail_after(LIMIT):
        for s in (a, b):
            await s.load()
        assert await outcome(a, SignState(5, 0, 1, X)) == "ha_missing"  # not created yet
        created = await create_watermark(clients[0], key.encode(), SignState.INITIAL, "ops")
        assert created.outcome is RaiseOutcome.RAISED
        assert await outcome(a, SignState(5, 0, 1, X)) == "won"
        assert await outcome(b, SignState(5, 0, 1, Y)) == "ha_lost"
        kept = await trio.to_thread.run_sync(etcd.get_value, key)
        saves = (a_local.saves, b_local.saves)
        leader = await trio.to_thread.run_sync(etcd.wait_leader)
        await trio.to_thread.run_sync(
            lambda: etcd.post(leader, "/v3/kv/deleterange", {"key": b64(key)})
        )
        # before the fix: "won" (B created the key and would have signed Y at 5/0/1)
        assert await outcome(b, SignState(5, 0, 1, Y)) == "ha_missing"
        assert await outcome(a, SignState(5, 0, 2, X)) == "ha_missing"
        assert await trio.to_thread.run_sync(etcd.get_value, key) is None  # nothing written
        assert (a_local.saves, b_local.saves) == saves  # nothing saved locally either
        # an operator puts the watermark back: both go on from it
        assert kept is not None
        await trio.to_thread.run_sync(lambda: etcd.put_value(key, kept))
        assert await outcome(b, SignState(5, 0, 1, Y)) == "ha_lost"
        assert await outcome(a, SignState(5, 0, 2, X)) == "won"
    assert parse_watermark(kept or b"").state == SignState(5, 0, 1, X)
    gone = [r.getMessage() for r in caplog.records if MISSING in r.getMessage()]
    assert len(gone) == 3 and all(f"[{chain}] shared watermark missing" in m for m in gone)


async def test_a_host_restarted_after_etcd_lost_its_data_does_not_sign_from_its_own_state(
    clients: list[EtcdClient], tmp_path: Path
) -> None:
    """A signed 5/0/1 over X; B's KMS restarts (a new store) with its state still behind,
    at 4/0/2, and etcd has lost the key. B must not create it from 4/0/2 and sign Y at
    5/0/1: first contact refuses until an operator creates the key."""
    chain = f"chain-{uuid.uuid4().hex[:8]}"
    key = f"/tmkms-safety/{chain}".encode()
    b_local = LocalFile(tmp_path / "b.json")
    b = store(b_local, clients[1], "kms-b", chain)
    with trio.fail_after(LIMIT):
        await b_local.save(SignState(4, 0, 2, Y))  # what B signed before its restart
        b_local.saves = 0
        await b.load()
        assert await outcome(b, SignState(5, 0, 1, Y)) == "ha_missing"
        with pytest.raises(HaRefused) as refused:
            await b.reconcile()
        assert refused.value.reason == "ha_missing" and "tmkms state init" in str(refused.value)
        assert (await clients[0].range(key)).kvs == ()  # nothing written
        assert b_local.saves == 0 and b.last_reconcile is None
        # the operator creates it above every host's state: B adopts it, is refused
        # below it, and signs above it
        above = SignState(6, 0, 0, BlockRef.NIL)
        assert (await create_watermark(clients[0], key, above, "ops")).outcome.value == "raised"
        assert await outcome(b, SignState(5, 0, 1, Y)) == "ha_lost"
        assert b.last_reconcile is not None and b.last_reconcile.action.value == "adopted"
        assert await b_local.load() == above
        assert await outcome(b, SignState(6, 0, 1, Y)) == "won"
        assert await b_local.load() == SignState(6, 0, 1, Y)
