"""Flaky links: the chaos proxy between node and KMS for hundreds of connection cycles.

The proxy delays, splits, stalls mid-frame, corrupts (over Secret Connection only: it is
authenticated, plaintext unix framing is not), drops and resets, all from a seed. The node
side walks heights on whatever connection it has, and when the link breaks it waits for the
KMS to dial in again. What must hold: the KMS comes back every time (no connection for
STUCK seconds is a deadlock), every answer is a valid signature or a RemoteSignerError, no
two signatures conflict, and after the storm the KMS holds exactly the file descriptors
(real process) or trio tasks (in-process Service) it held before.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import time
from pathlib import Path

import attrs
import pytest
import trio

from kms.backoff import Backoff
from kms.config import load_config
from kms.service import Service
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address
from kms.transport.stream import secret_handshake
from tests.fault.kit import (
    LINK_ERRORS,
    KmsHome,
    Ledger,
    Walker,
    fault_counted,
    log_book,
    open_fds,
    start_kms,
)
from tests.support.chaos import CALM, ChaosPolicy, ChaosProxy, chaos_proxy

STUCK = 15.0  # no connection from the KMS for this long means it stopped dialling
NODE_TIMEOUT = 0.5
KMS_TIMEOUT = "0.5"  # seconds, the validator's `timeout`

STORM = ChaosPolicy(
    delay=0.05,
    max_delay=0.01,
    split=0.2,
    stall=0.003,
    stall_time=0.7,  # longer than both sides' timeouts: they must give up, then reconnect
    corrupt=0.01,
    drop=0.02,
    reset=0.02,
)
PLAINTEXT_STORM = attrs.evolve(STORM, corrupt=0.0)


@attrs.define
class NodeSide:
    """The node's end: accept, walk until the link breaks or we hang up, repeat."""

    node: SimulatedNode
    walker: Walker
    rng: random.Random
    connections: int = 0
    failed_handshakes: int = 0

    async def connect(self) -> SignerClient:
        """The next connection whose handshake completes (deadlock: AssertionError)."""
        assert self.node.listener is not None and self.node.address is not None
        while True:
            with trio.move_on_after(STUCK) as waited:
                stream: trio.abc.Stream = await self.node.listener.accept()
            if waited.cancelled_caught:
                raise AssertionError(f"the KMS did not dial in for {STUCK} s")
            if self.node.address.scheme == "tcp":
                try:
                    with trio.fail_after(NODE_TIMEOUT):
                        stream = await secret_handshake(stream, self.node.identity)
                except (*LINK_ERRORS, trio.BrokenResourceError):
                    self.failed_handshakes += 1
                    await trio.aclose_forcefully(stream)
                    continue
            self.connections += 1
            return SignerClient(
                stream=stream,
                chain_id=self.node.chain_id,
                version=self.node.version,
                timeout=NODE_TIMEOUT,
            )

    async def cycles(self, count: int) -> None:
        """Live through ``count`` connections, hanging up ourselves now and then."""
        for _ in range(count):
            client = await self.connect()
            await self.walker.walk(client, heights=self.rng.randint(1, 6))
            await trio.aclose_forcefully(client.stream)

    async def steady(self, proxy: ChaosProxy) -> SignerClient:
        """Calm link, every old connection cut, one fresh connection answering pings."""
        proxy.policy = CALM
        proxy.cut_all()
        client = await self.connect()
        await client.ping()
        await trio.sleep(0.3)  # let the KMS side settle (old sessions finish logging)
        await client.ping()
        return client


def count_tasks() -> int:
    """Every task of this trio run."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def listening_node(tmp_path: Path, chain_id: str, transport: str) -> SimulatedNode:
    node = SimulatedNode(chain_id=chain_id, timeout=NODE_TIMEOUT)
    if transport == "unix":
        await node.listen(Address(scheme="unix", path=str(tmp_path / "node.sock")))
    else:
        await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
    return node


def proxy_address(tmp_path: Path, transport: str) -> Address:
    if transport == "unix":
        return Address(scheme="unix", path=str(tmp_path / "proxy.sock"))
    return Address(scheme="tcp", host="127.0.0.1", port=0)


def report(
    scenario: str, side: NodeSide, proxy: ChaosProxy, lines: list[str], **measured: object
) -> None:
    ledger = side.walker.ledger
    conflicts = ledger.conflicts() + log_book(lines).conflicts()
    fault_counted(
        scenario,
        cycles=side.connections,
        link_faults=sum(proxy.stats.faults.values()),
        requests=side.walker.requests,
        signatures=ledger.signatures,
        refused=sum(ledger.refused.values()),
        conflicts=len(conflicts),
    )
    shown = " ".join(f"{k}={v}" for k, v in measured.items())
    print(
        f"{scenario}: connections={side.connections} failed_handshakes={side.failed_handshakes} "
        f"requests={side.walker.requests} signatures={ledger.signatures} "
        f"refused={dict(ledger.refused)} proxy[{proxy.stats.summary()}] {shown}"
    )
    assert not conflicts, conflicts
    assert set(ledger.refused) <= {2}, ledger.refused  # only double-sign refusals
    assert ledger.signatures > side.connections


# ---------------------------------------------------------------- in-process Service


async def in_process_storm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str, cycles: int, seed: int
) -> None:
    caplog.set_level(logging.INFO)
    home = KmsHome.create(tmp_path, chain_id="links-1")
    node = await listening_node(tmp_path, home.chain_id, transport)
    assert node.address is not None
    policy = STORM if transport == "tcp" else PLAINTEXT_STORM
    rng = random.Random(seed)
    side = NodeSide(node, Walker(Ledger(home.chain_id, home.verify_key), rng), rng)
    async with chaos_proxy(proxy_address(tmp_path, transport), node.address, seed=seed) as proxy:
        assert proxy.address is not None
        config = home.write_config(
            [str(proxy.address)], validator_extra=[f"timeout = {KMS_TIMEOUT}"]
        )
        service = await Service.open(load_config(config))
        service.backoff_factory = lambda: Backoff(initial=0.001, cap=0.01, rng=random.Random(seed))
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            client = await side.steady(proxy)
            tasks_before, fds_before = count_tasks(), len(os.listdir("/proc/self/fd"))
            await trio.aclose_forcefully(client.stream)
            proxy.policy = policy
            started = time.perf_counter()
            await side.cycles(cycles)
            elapsed = time.perf_counter() - started
            client = await side.steady(proxy)
            tasks_after, fds_after = count_tasks(), len(os.listdir("/proc/self/fd"))
            assert proxy.active == 1
            await trio.aclose_forcefully(client.stream)
            nursery.cancel_scope.cancel()
    await node.aclose()
    report(
        f"flaky link, in-process ({transport})",
        side,
        proxy,
        caplog.messages,
        tasks=f"{tasks_before}->{tasks_after}",
        fds=f"{fds_before}->{fds_after}",
        seconds=f"{elapsed:.1f}",
    )
    assert tasks_after == tasks_before, "trio tasks leaked"
    assert fds_after == fds_before, "file descriptors leaked"
    assert side.connections >= cycles


@pytest.mark.parametrize(("transport", "cycles"), [("tcp", 100), ("unix", 50)])
async def test_flaky_link_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str, cycles: int
) -> None:
    with trio.fail_after(60):
        await in_process_storm(tmp_path, caplog, transport, cycles=cycles, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize(("transport", "cycles"), [("tcp", 400), ("unix", 200)])
async def test_flaky_link_in_process_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str, cycles: int
) -> None:
    with trio.fail_after(150):
        await in_process_storm(tmp_path, caplog, transport, cycles=cycles, seed=12)


# ---------------------------------------------------------------- the real process


async def process_storm(tmp_path: Path, transport: str, cycles: int, seed: int) -> None:
    home = KmsHome.create(tmp_path, chain_id="links-2")
    node = await listening_node(tmp_path, home.chain_id, transport)
    assert node.address is not None
    policy = STORM if transport == "tcp" else PLAINTEXT_STORM
    rng = random.Random(seed)
    side = NodeSide(node, Walker(Ledger(home.chain_id, home.verify_key), rng), rng)
    async with chaos_proxy(proxy_address(tmp_path, transport), node.address, seed=seed) as proxy:
        assert proxy.address is not None
        config = home.write_config(
            [str(proxy.address)], validator_extra=[f"timeout = {KMS_TIMEOUT}"]
        )
        async with start_kms(config) as kms:
            pid = kms.process.pid
            client = await side.steady(proxy)
            fds_before = open_fds(pid)
            await trio.aclose_forcefully(client.stream)
            proxy.policy = policy
            started = time.perf_counter()
            await side.cycles(cycles)
            elapsed = time.perf_counter() - started
            client = await side.steady(proxy)
            fds_after = open_fds(pid)
            assert kms.process.returncode is None
            await trio.aclose_forcefully(client.stream)
            lines = kms.lines
    await node.aclose()
    report(
        f"flaky link, real process ({transport})",
        side,
        proxy,
        lines,
        fds=f"{fds_before}->{fds_after}",
        seconds=f"{elapsed:.1f}",
    )
    assert fds_after == fds_before, "the KMS leaked file descriptors"
    assert not [line for line in lines if "unexpected error" in line or "Traceback" in line]


async def test_flaky_link_real_process(tmp_path: Path) -> None:
    with trio.fail_after(60):
        await process_storm(tmp_path, "tcp", cycles=25, seed=21)


@pytest.mark.slow
@pytest.mark.parametrize(("transport", "cycles"), [("tcp", 120), ("unix", 100)])
async def test_flaky_link_real_process_long(tmp_path: Path, transport: str, cycles: int) -> None:
    with trio.fail_after(150):
        await process_storm(tmp_path, transport, cycles=cycles, seed=22)


# ---------------------------------------------------------------- the proxy itself


async def test_proxy_forwards_every_byte_unless_told_to_corrupt_or_cut(tmp_path: Path) -> None:
    """Calm, delayed and split links deliver the exact bytes; the stats count the faults."""

    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data)

    async def round_trip(seed: int, policy: ChaosPolicy) -> collections.Counter[str]:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
            listeners = await nursery.start(serve, echo, 0)
            port = listeners[0].socket.getsockname()[1]
            upstream = Address(scheme="tcp", host="127.0.0.1", port=port)
            listen = Address(scheme="tcp", host="127.0.0.1", port=0)
            async with chaos_proxy(listen, upstream, policy, seed) as proxy:
                assert proxy.address is not None and proxy.address.port is not None
                stream = await trio.open_tcp_stream("127.0.0.1", proxy.address.port)
                payload = random.Random(seed).randbytes(20000)
                received = b""
                with trio.fail_after(10):
                    for start in range(0, len(payload), 1000):
                        await stream.send_all(payload[start : start + 1000])
                        while len(received) < start + 1000:
                            received += await stream.receive_some()
                await stream.aclose()
                assert proxy.stats.connections == 1
                assert proxy.stats.bytes_forwarded == 2 * len(payload)
            nursery.cancel_scope.cancel()
        assert received == payload
        return proxy.stats.faults

    assert not await round_trip(1, CALM)
    faults = await round_trip(2, ChaosPolicy(delay=0.3, max_delay=0.002, split=0.5))
    assert faults["split"] > 0 and faults["delay"] > 0
    assert set(faults) == {"split", "delay"}


class Recorder:
    """A stand-in destination stream that remembers each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.writes.append(bytes(data))


async def test_the_same_seed_and_chunks_give_the_same_faults() -> None:
    policy = ChaosPolicy(delay=0.2, max_delay=0.0, split=0.4, corrupt=0.2, drop=0.02, reset=0.02)
    chunks = [random.Random(n).randbytes(200 + n) for n in range(60)]

    async def replay(seed: int) -> tuple[list[bytes], list[str]]:
        proxy = ChaosProxy(upstream=Address(scheme="unix", path="/nowhere"), policy=policy)
        rng, dst, endings = random.Random(seed), Recorder(), []
        for chunk in chunks:
            try:
                await proxy._forward(chunk, dst, rng)  # type: ignore[arg-type]
            except Exception as exc:  # a drop or reset ends a link; keep replaying
                endings.append(str(exc))
        return dst.writes, [*sorted(proxy.stats.faults.elements()), *endings]

    first = await replay(5)
    assert first == await replay(5)
    assert first != await replay(6)
    writes, faults = first
    assert {"split", "corrupt", "delay"} <= set(faults)
    assert b"".join(writes) != b"".join(chunks)  # corrupted and cut somewhere


def test_policy_probabilities_are_checked() -> None:
    with pytest.raises(ValueError, match="probability"):
        ChaosPolicy(drop=1.5)
    with pytest.raises(ValueError, match="negative"):
        ChaosPolicy(stall_time=-1)
