"""The shared watermark store against a real 3-member etcd cluster.

Two stores in one process stand for two KMS hosts (each its own client, local state file,
host name and nonces). What is stored in etcd is read back with the helpers' stdlib client.
The only stand-in is a chaos proxy between a store and etcd that cuts replies after the
request went through.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from kms.chain.state import BlockRef, SignState
from kms.ha.admin import RaiseOutcome, create_watermark
from kms.ha.cas import ReconcileAction
from kms.ha.client import EtcdClient
from kms.ha.errors import HaRefused
from kms.ha.store import SharedWatermarkStore
from kms.ha.watermark import format_watermark, parse_watermark
from kms.transport.address import Address
from tests.support.chaos import ChaosPolicy, ChaosProxy
from tests.support.etcd import EtcdCluster, LocalFile
from tests.support.watermarks import init_watermarks

LIMIT = 60.0
A = BlockRef(b"\xaa" * 32, 1, b"\x0a" * 32)
B = BlockRef(b"\xbb" * 32, 1, b"\x0b" * 32)


@attrs.define
class Recorder:
    """A CasObserver that remembers every outcome."""

    events: list[tuple[str, str, str]] = attrs.field(factory=list)

    def cas_won(self, chain_id: str, seconds: float) -> None:
        assert 0 <= seconds < 10
        self.events.append(("won", chain_id, ""))

    def cas_lost(self, chain_id: str) -> None:
        self.events.append(("lost", chain_id, ""))

    def cas_refused(self, chain_id: str, cause: str) -> None:
        self.events.append(("refused", chain_id, cause))


@attrs.define
class Host:
    """One KMS host's view of one chain: its store, local file, client and observer."""

    store: SharedWatermarkStore
    local: LocalFile
    client: EtcdClient
    observer: Recorder


class Hosts:
    """Makes hosts for a test and closes their clients after it."""

    def __init__(self) -> None:
        self.made: list[Host] = []

    def add(
        self, tmp_path: Path, name: str, chain: str, endpoints: list[str], *, timeout: float = 1.0
    ) -> Host:
        local = LocalFile(tmp_path / f"{name}-{chain}.json")
        client = EtcdClient(endpoints)
        observer = Recorder()
        store = SharedWatermarkStore(
            local,
            chain_id=chain,
            client=client,
            host=name,
            prefix="/tmkms-test/",
            timeout=timeout,
            observer=observer,
        )
        self.made.append(Host(store, local, client, observer))
        return self.made[-1]

    async def aclose(self) -> None:
        for made in self.made:
            await made.client.aclose()


@pytest.fixture
async def hosts() -> AsyncIterator[Hosts]:
    made = Hosts()
    yield made
    await made.aclose()


async def fresh_chain(etcd: EtcdCluster, *, create: bool = True) -> str:
    """A new chain id; its watermark created at height 0 (as `tmkms state init` would)."""
    chain = f"chain-{uuid.uuid4().hex[:12]}"
    if create:
        await init_watermarks(etcd, "/tmkms-test/", [chain])
    return chain


async def stored(etcd: EtcdCluster, chain: str) -> bytes | None:
    value = await trio.to_thread.run_sync(etcd.get_value, f"/tmkms-test/{chain}")
    assert value is None or isinstance(value, bytes)
    return value


async def attempt(h: Host, state: SignState) -> str:
    """Save ``state`` through ``h``: 'won', or the refusal's reason."""
    try:
        await h.store.save(state)
    except HaRefused as exc:
        return exc.reason
    return "won"


async def test_first_save_reads_the_key_then_one_round_trip_per_save(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    with trio.fail_after(LIMIT):
        await a.store.load()
        await a.store.save(SignState(5, 0, 1, A))
        first = parse_watermark(await stored(etcd, chain) or b"")
        flushes = a.store._batcher.flushes
        await a.store.save(SignState(5, 0, 2, A))
        second = parse_watermark(await stored(etcd, chain) or b"")
    assert a.store.last_reconcile is not None
    assert a.store.last_reconcile.action is ReconcileAction.UNCHANGED  # both at height 0
    assert first.state == SignState(5, 0, 1, A) and first.host == "kms-a"
    assert second.state == SignState(5, 0, 2, A)
    assert second.nonce != first.nonce
    assert a.store._batcher.flushes == flushes + 1  # the remembered revision: no read
    assert a.local.file.load() == SignState(5, 0, 2, A)
    assert [e[0] for e in a.observer.events] == ["won", "won"]


async def test_two_hosts_racing_conflicting_blocks_exactly_one_wins(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    b = hosts.add(tmp_path, "kms-b", chain, list(reversed(etcd.endpoints)))
    outcomes = {"a": 0, "b": 0}
    with trio.fail_after(LIMIT):
        for height in range(1, 61):
            results: dict[str, str] = {}

            async def run(
                name: str,
                h: Host,
                block: BlockRef,
                height: int = height,
                out: dict[str, str] = results,
            ) -> None:
                out[name] = await attempt(h, SignState(height, 0, 1, block))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "a", a, A)
                nursery.start_soon(run, "b", b, B)
            winners = [name for name, result in results.items() if result == "won"]
            assert len(winners) == 1, results
            loser = "b" if winners == ["a"] else "a"
            assert results[loser] == "ha_lost"
            outcomes[winners[0]] += 1
            value = parse_watermark(await stored(etcd, chain) or b"")
            assert value.host == f"kms-{winners[0]}"
            assert value.state.block == (A if winners == ["a"] else B)
    assert outcomes["a"] + outcomes["b"] == 60
    print(f"race: {outcomes}")


async def test_the_same_vote_may_be_signed_by_both(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    b = hosts.add(tmp_path, "kms-b", chain, etcd.endpoints)
    with trio.fail_after(LIMIT):
        assert await attempt(a, SignState(9, 0, 1, A)) == "won"
        assert await attempt(b, SignState(9, 0, 1, A)) == "won"
        assert await attempt(b, SignState(9, 0, 1, B)) == "ha_rule"


async def test_lost_compare_rereads_and_retries(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    b = hosts.add(tmp_path, "kms-b", chain, etcd.endpoints)
    with trio.fail_after(LIMIT):
        await a.store.save(SignState(1, 0, 1, A))  # a remembers its revision
        await b.store.save(SignState(2, 0, 1, B))  # b moves the key
        await a.store.save(SignState(3, 0, 1, A))  # a's compare fails, then succeeds
    assert a.store.counters["lost_compares"] == 1
    assert parse_watermark(await stored(etcd, chain) or b"").host == "kms-a"
    assert a.local.file.load() == SignState(3, 0, 1, A)


async def test_a_stale_guess_never_refuses_by_itself(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    b = hosts.add(tmp_path, "kms-b", chain, etcd.endpoints)
    with trio.fail_after(LIMIT):
        await a.store.save(SignState(3, 0, 0, A))  # a remembers: proposal A
        await b.store.save(SignState(3, 0, 1, BlockRef.NIL))  # b: prevote nil
        # precommit B is refused after proposal A, allowed after prevote nil (the current)
        assert await attempt(a, SignState(3, 0, 2, B)) == "won"


@pytest.mark.parametrize(
    "value",
    [
        b"hello",
        b'{"height":"5","round":"0","step":1,"block_id":null}',  # a tmkms state, no writer
        format_watermark(SignState(5, 0, 1, A), "kms-z", "ab" * 12)[:-5],
    ],
)
async def test_a_malformed_value_is_refused_and_nothing_is_saved(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    chain = await fresh_chain(etcd)
    await trio.to_thread.run_sync(etcd.put_value, f"/tmkms-test/{chain}", value)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    with trio.fail_after(LIMIT):
        await a.store.load()
        saves = a.local.saves
        with caplog.at_level(logging.ERROR, logger="kms.ha"), pytest.raises(HaRefused) as info:
            await a.store.save(SignState(6, 0, 1, A))
    assert info.value.reason == "ha_malformed"
    assert f"/tmkms-test/{chain}" in str(info.value)
    assert a.local.saves == saves
    assert a.local.file.load() == SignState.INITIAL
    assert a.observer.events == [("refused", chain, "malformed")]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert chain in errors[0].getMessage() and "malformed" in errors[0].getMessage()
    assert await stored(etcd, chain) == value  # untouched


async def test_reconcile_refuses_a_missing_key_then_raises_and_adopts(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd, create=False)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints)
    b = hosts.add(tmp_path, "kms-b", chain, etcd.endpoints)
    await trio.to_thread.run_sync(a.local.file.save, SignState(10, 0, 2, A))
    await trio.to_thread.run_sync(b.local.file.save, SignState(12, 1, 1, B))
    with trio.fail_after(LIMIT):
        with pytest.raises(HaRefused) as missing:
            await a.store.reconcile()
        assert missing.value.reason == "ha_missing" and a.store.last_reconcile is None
        assert await stored(etcd, chain) is None  # first contact never creates it
        created = await create_watermark(a.client, a.store.key, SignState(10, 0, 2, A), "kms-a")
        assert created.outcome is RaiseOutcome.RAISED  # `tmkms state init` on host a
        assert (await a.store.reconcile()).action is ReconcileAction.UNCHANGED
        raised = await b.store.reconcile()
        assert raised.action is ReconcileAction.RAISE
        assert parse_watermark(await stored(etcd, chain) or b"").state == SignState(12, 1, 1, B)
        c = hosts.add(tmp_path, "kms-c", chain, etcd.endpoints)  # a new host: empty local state
        adopted = await c.store.reconcile()
        assert adopted.action is ReconcileAction.ADOPT
        assert adopted.local == SignState(12, 1, 1, B) and adopted.writer == "kms-b"
        assert c.local.file.load() == SignState(12, 1, 1, B)
        again = await c.store.reconcile()
        assert again.action is ReconcileAction.UNCHANGED


class ReplyCutter(ChaosProxy):
    """The chaos proxy with its policy applied to etcd's replies only (requests go through)."""

    async def _forward(self, data: bytes, dst: trio.abc.Stream, rng: object) -> None:
        if any(link.downstream is dst for link in self._links):
            await super()._forward(data, dst, rng)  # type: ignore[arg-type]
        else:
            await self._write(dst, data)


async def test_ambiguous_outcomes_are_resolved_and_never_both_own(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    chain = await fresh_chain(etcd)
    policy = ChaosPolicy(drop=0.4)  # 40% of etcd's replies are cut short
    members = [etcd.members[i].client_port for i in (0, 1, 2, 0)]
    proxies = [
        ReplyCutter(Address("tcp", "127.0.0.1", port), policy, seed=i)
        for i, port in enumerate(members)
    ]
    rounds, won = 60, {"a": 0, "b": 0, "none": 0}
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        endpoints = []
        for proxy in proxies:
            address = await proxy.listen(Address("tcp", "127.0.0.1", 0))
            endpoints.append(f"http://127.0.0.1:{address.port}")
            await nursery.start(proxy.serve)
        a = hosts.add(tmp_path, "kms-a", chain, endpoints[:2])
        b = hosts.add(tmp_path, "kms-b", chain, endpoints[2:])
        with trio.fail_after(LIMIT):
            for height in range(1, rounds + 1):
                results: dict[str, str] = {}

                async def run(
                    name: str,
                    h: Host,
                    block: BlockRef,
                    delay: float,
                    *,
                    height: int = height,
                    out: dict[str, str] = results,
                ) -> None:
                    await trio.sleep(delay)
                    out[name] = await attempt(h, SignState(height, 0, 1, block))

                async with trio.open_nursery() as race:
                    race.start_soon(run, "a", a, A, rng.uniform(0, 0.003))
                    race.start_soon(run, "b", b, B, rng.uniform(0, 0.003))
                winners = [name for name, result in results.items() if result == "won"]
                assert len(winners) <= 1, results  # never both own the step
                won[winners[0] if winners else "none"] += 1
                value = parse_watermark(await stored(etcd, chain) or b"")
                if winners:
                    assert value.host == f"kms-{winners[0]}"
                    assert value.state == SignState(height, 0, 1, A if winners == ["a"] else B)
        nursery.cancel_scope.cancel()
    for proxy in proxies:
        await proxy.aclose()
    counters = a.store.counters + b.store.counters
    drops = sum(proxy.stats.faults["drop"] for proxy in proxies)
    print(f"ambiguity: {won} drops={drops} {dict(counters)}")
    assert drops > 10
    assert counters["resends"] > 0
    assert counters["won_by_nonce"] > 0  # a host learned from its nonce that it had won
    assert won["a"] + won["b"] >= rounds * 3 // 4  # most steps get signed despite the cuts


async def test_quorum_lost_refuses_in_time_then_resumes(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts, caplog: pytest.LogCaptureFixture
) -> None:
    chain = await fresh_chain(etcd)
    a = hosts.add(tmp_path, "kms-a", chain, etcd.endpoints, timeout=1.0)
    height = 1
    with trio.fail_after(LIMIT):
        assert await attempt(a, SignState(height, 0, 1, A)) == "won"
        saves = a.local.saves
        await trio.to_thread.run_sync(etcd.lose_quorum, 0)
        causes = []
        with caplog.at_level(logging.ERROR, logger="kms.ha"):
            for _ in range(4):
                height += 1
                started = time.monotonic()
                result = await attempt(a, SignState(height, 0, 1, A))
                elapsed = time.monotonic() - started
                assert result != "won"
                assert elapsed <= 1.0 + 0.5, (result, elapsed)
                causes.append(result)
        assert a.local.saves == saves  # nothing saved, nothing signed
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 4 and all(chain in line for line in errors)
        assert set(causes) <= {"ha_unavailable", "ha_ambiguous", "ha_unreachable"}
        await trio.to_thread.run_sync(etcd.regain_quorum)
        regained = time.monotonic()
        while True:
            height += 1
            if await attempt(a, SignState(height, 0, 1, A)) == "won":
                break
            await trio.sleep(0.05)
        resumed = time.monotonic() - regained
    print(f"quorum: refusals={causes} resumed after {resumed:.2f} s")
    assert resumed <= 3.0


async def test_leader_killed_next_success_within_bound(
    etcd: EtcdCluster, tmp_path: Path, hosts: Hosts
) -> None:
    gaps = []
    for run in range(3):
        await trio.to_thread.run_sync(etcd.heal)
        chain = await fresh_chain(etcd)
        a = hosts.add(tmp_path, f"kms-{run}", chain, etcd.endpoints)
        height = 1
        with trio.fail_after(LIMIT):
            assert await attempt(a, SignState(height, 0, 1, A)) == "won"
            leader = await trio.to_thread.run_sync(etcd.wait_leader)
            a.client._current = leader  # the worst case: the client talks to the leader
            await trio.to_thread.run_sync(etcd.kill, leader)
            killed = time.monotonic()
            while True:
                height += 1
                if await attempt(a, SignState(height, 0, 1, A)) == "won":
                    break
                await trio.sleep(0.02)
            gaps.append(time.monotonic() - killed)
    print(f"leader killed: next success after {[round(g, 2) for g in gaps]} s")
    assert statistics.median(gaps) <= 2.5
