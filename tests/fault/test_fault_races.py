"""Races: several validator connections of one chain fire conflicting and identical requests.

Every schedule is drawn from a seeded random.Random: per height and round a small set of
candidate blocks (two real blocks and nil) shared by all connections, so the connections
ask for the very same thing (which must come back signed, identically for votes) as often
as for conflicting things (of which at most one may be signed). Connections pause at random
between requests to vary the interleavings. Run against an in-process Service (all
validators in one trio run, over unix sockets and tcp) and against the real process.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio

from kms.chain.state import SignState
from kms.config import load_config
from kms.protocol.messages import BlockId
from kms.service import Service
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address
from tests.fault.kit import (
    NIL,
    KmsHome,
    Ledger,
    accept,
    ask,
    block,
    fault_counted,
    log_book,
    start_kms,
)

Position = tuple[int, int, int, BlockId]


def schedules(
    rng: random.Random, connections: int, heights: int, first: int = 1
) -> list[list[Position]]:
    """One request list per connection, over shared candidate blocks, with regressions."""
    span = range(first, first + heights)
    candidates = {(h, r): [block(rng), block(rng), NIL] for h in span for r in range(3)}
    result = []
    for _ in range(connections):
        requests: list[Position] = []
        for height in span:
            for round_ in range(rng.choice((1, 1, 2, 3))):
                for step in (0, 1, 2):
                    if rng.random() < 0.85:
                        requests.append(
                            (height, round_, step, rng.choice(candidates[(height, round_)]))
                        )
            if requests and rng.random() < 0.2:  # a node that went back in time
                h, r, s, _ = rng.choice(requests)
                requests.append((h, r, s, rng.choice(candidates[(h, r)])))
        result.append(requests)
    return result


async def fire(
    client: SignerClient, ledger: Ledger, requests: list[Position], rng: random.Random
) -> None:
    """Send one connection's requests in order, pausing at random between them."""
    for height, round_, step, block_id in requests:
        await ask(client, ledger, step, (height, round_, block_id))
        pause = rng.random()
        if pause < 0.3:
            await trio.lowlevel.checkpoint()
        elif pause < 0.4:
            await trio.sleep(rng.uniform(0, 0.002))


async def listening_nodes(
    tmp_path: Path, chain_id: str, transports: list[str]
) -> list[SimulatedNode]:
    nodes = []
    for index, transport in enumerate(transports):
        node = SimulatedNode(chain_id=chain_id)
        if transport == "unix":
            await node.listen(Address(scheme="unix", path=str(tmp_path / f"pv{index}.sock")))
        else:
            await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
        nodes.append(node)
    return nodes


async def race(
    clients: list[SignerClient], ledger: Ledger, seed: int, heights: int, first: int = 1
) -> tuple[int, int]:
    """Run one seeded schedule on every connection at once; return (requests, signed)."""
    rng = random.Random(seed)
    plans = schedules(rng, len(clients), heights, first)
    before = ledger.signatures
    async with trio.open_nursery() as nursery:
        for client, plan in zip(clients, plans, strict=True):
            nursery.start_soon(fire, client, ledger, plan, random.Random(rng.random()))
    return sum(map(len, plans)), ledger.signatures - before


TRANSPORTS = ["unix", "unix", "tcp", "unix"]


async def in_process_races(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, seeds: range, heights: int
) -> None:
    caplog.set_level(logging.INFO)
    for seed in seeds:
        root = tmp_path / f"seed{seed}"
        home = KmsHome.create(root, chain_id="race-1")
        nodes = await listening_nodes(root, home.chain_id, TRANSPORTS)
        config = home.write_config([str(node.address) for node in nodes])
        service = await Service.open(load_config(config))
        ledger = Ledger(home.chain_id, home.verify_key)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            clients = [await accept(node) for node in nodes]
            requests, signed = await race(clients, ledger, seed, heights)
            nursery.cancel_scope.cancel()
        for node in nodes:
            await node.aclose()
        tracker = service.trackers[home.chain_id]
        on_disk = home.load_state()
        assert on_disk == tracker.state
        assert ledger.book.highest() <= on_disk.hrs
        logged = log_book(caplog.messages)
        conflicts = ledger.conflicts() + logged.conflicts()
        fault_counted(
            "races, in-process Service",
            schedules=1,
            requests=requests,
            signatures=signed,
            refused=sum(ledger.refused.values()),
            conflicts=len(conflicts),
        )
        assert not conflicts, (seed, conflicts)
        assert signed > 0 and ledger.refused[2] > 0, (seed, signed, ledger.refused)
        assert set(ledger.refused) == {2}, ledger.refused  # only double-sign refusals
        caplog.clear()


async def test_races_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(40):
        await in_process_races(tmp_path, caplog, range(12), heights=8)


@pytest.mark.slow
async def test_races_in_process_many_schedules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(150):
        await in_process_races(tmp_path, caplog, range(100, 200), heights=10)


async def process_races(tmp_path: Path, seeds: range, heights: int) -> None:
    home = KmsHome.create(tmp_path, chain_id="race-2")
    nodes = await listening_nodes(tmp_path, home.chain_id, TRANSPORTS)
    config = home.write_config([str(node.address) for node in nodes])
    ledger = Ledger(home.chain_id, home.verify_key)
    total_requests = 0
    async with start_kms(config) as kms:
        clients = [await accept(node) for node in nodes]
        for index, seed in enumerate(seeds):
            # every schedule starts above the last one, so each is a fresh race
            requests, _ = await race(clients, ledger, seed, heights, first=1 + index * heights)
            total_requests += requests
        lines = kms.lines
    for node in nodes:
        await node.aclose()
    assert kms.process.returncode == 0
    logged = log_book(lines)
    conflicts = ledger.conflicts() + logged.conflicts()
    fault_counted(
        "races, real process",
        schedules=len(seeds),
        requests=total_requests,
        signatures=ledger.signatures,
        refused=sum(ledger.refused.values()),
        conflicts=len(conflicts),
    )
    assert not conflicts, conflicts
    assert logged.count >= ledger.signatures
    assert home.load_state().hrs >= ledger.book.highest()


async def test_races_real_process(tmp_path: Path) -> None:
    with trio.fail_after(40):
        await process_races(tmp_path, range(10), heights=6)


@pytest.mark.slow
async def test_races_real_process_many_schedules(tmp_path: Path) -> None:
    with trio.fail_after(150):
        await process_races(tmp_path, range(200, 350), heights=8)


class NoLock:
    """A lock that never waits: what the tracker would be without its per-chain lock."""

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint()

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_the_races_catch_a_tracker_without_its_lock(tmp_path: Path) -> None:
    """The harness has teeth: remove the per-chain lock and conflicting signatures appear."""
    found = 0
    with trio.fail_after(30):
        for seed in range(6):
            root = tmp_path / f"seed{seed}"
            home = KmsHome.create(root, chain_id="race-3")
            nodes = await listening_nodes(root, home.chain_id, TRANSPORTS)
            config = home.write_config([str(node.address) for node in nodes])
            service = await Service.open(load_config(config))
            service.trackers[home.chain_id]._lock = NoLock()  # type: ignore[assignment]
            ledger = Ledger(home.chain_id, home.verify_key)
            async with trio.open_nursery() as nursery:
                await nursery.start(service.serve)
                clients = [await accept(node) for node in nodes]
                await race(clients, ledger, seed, heights=8)
                nursery.cancel_scope.cancel()
            for node in nodes:
                await node.aclose()
            found += len(ledger.conflicts())
    assert found > 0, "no conflict without the lock: the races do not race"
    print(f"conflicts found without the lock: {found}")


def test_schedules_are_reproducible_and_conflicting() -> None:
    """The same seed gives the same schedule; schedules hold identical and conflicting asks."""
    first = schedules(random.Random(5), 3, 6)
    assert first == schedules(random.Random(5), 3, 6)
    slots: dict[tuple[int, int, int], set[bytes]] = {}
    for plan in first:
        for height, round_, step, block_id in plan:
            slots.setdefault((height, round_, step), set()).add(block_id.hash)
    assert any(len(blocks) > 1 for blocks in slots.values())  # conflicting asks
    counts = [sum(1 for plan in first for p in plan if p[:3] == hrs) for hrs in slots]
    assert max(counts) > 1  # the same position asked by several connections
    assert SignState.INITIAL.hrs == (0, 0, 0)
