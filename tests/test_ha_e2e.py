"""End to end: several real `tmkms start` processes share one key and one etcd watermark.

Each host is a real `tmkms start` with its own state folder, Secret Connection identity and
``[etcd] host`` name, and a softsign copy of the same consensus key; each dials its own
simulated node. At every step all nodes ask their KMS, at the same instant, for the same
height/round/step over *different* blocks: at most one block may ever be signed there.
Meanwhile the 3-member etcd cluster (real processes, started by tests/support/etcd.py) loses
its leader, a member is paused, the quorum goes and comes back, a KMS is killed at points of
its sign path and restarted (also as a new host with an empty state), and a chaos proxy
between one KMS and etcd delays and cuts etcd's replies after the request went through.

The checker (:class:`Checker`) books every signature the nodes received (each verified over
the independent oracle's sign bytes) and every ``signed ...`` line the KMS processes logged
(which also covers a signature whose reply was lost), and counts: steps, conflicting pairs
(two blocks at one height/round/step, or two blocks among the votes of one height/round:
must be 0), steps signed by at least one host (>= 90 % of the steps run while a quorum is
up), and refusals by cause. Each scenario's counts are printed in the terminal summary.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import random
import re
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from nacl.signing import SigningKey

from kms.protocol.messages import BlockId, SignedMsgType
from kms.testing.chaos import ChaosPolicy, ChaosProxy
from kms.testing.consensus import make_proposal, make_vote
from kms.testing.node import SignerClient, SimulatedNode
from kms.transport.address import Address
from tests.fault.kit import (
    LINK_ERRORS,
    SHIM,
    Ledger,
    SignedBook,
    block,
    label,
    log_book,
    start_kms,
)
from tests.support.etcd import EtcdCluster, healed, module_cluster
from tests.support.kmsproc import KmsProcess, chain_toml, validator_toml, write_key

#: etcd's `timeout` in every KMS's [etcd] section (the spec's default).
ETCD_TIMEOUT = 1.0
#: The KMS's exit status when the shim crashes it at a crash point.
CRASH_CODE = 86
LIMIT = 120.0

# ---------------------------------------------------------------- the summary in CI output

#: What each scenario counted, printed in the terminal summary (as the fault suite does).
HA_COUNTS: dict[str, dict[str, int | str]] = {}


def ha_counted(scenario: str, **counts: int | str) -> None:
    """Record ``counts`` for ``scenario`` (printed at the end of the run)."""
    HA_COUNTS.setdefault(scenario, {}).update(counts)
    shown = " ".join(f"{key}={value}" for key, value in counts.items())
    print(f"{scenario}: {shown}")


class _Summary:
    """A plugin registered by this module: prints HA_COUNTS in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not HA_COUNTS:
            return
        terminalreporter.section("ha end to end")
        for scenario in sorted(HA_COUNTS):
            shown = " ".join(f"{key}={value}" for key, value in HA_COUNTS[scenario].items())
            terminalreporter.write_line(f"{scenario}: {shown}")


@pytest.fixture(scope="module", autouse=True)
def _ha_summary(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("ha-e2e-summary"):
        manager.register(_Summary(), "ha-e2e-summary")


# ---------------------------------------------------------------- etcd


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    yield from module_cluster(tmp_path_factory)


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> EtcdCluster:
    return healed(etcd_cluster)


async def in_thread(function: Any, *args: Any) -> Any:
    """A blocking cluster helper, off the trio loop (the nodes keep being served)."""
    return await trio.to_thread.run_sync(function, *args)


class ReplyCutter(ChaosProxy):
    """A chaos proxy whose faults hit etcd's replies only: every request goes through whole,
    so a cut reply leaves the KMS not knowing whether its txn was applied."""

    async def _forward(self, data: bytes, dst: trio.abc.Stream, rng: random.Random) -> None:
        if any(link.downstream is dst for link in self._links):
            await super()._forward(data, dst, rng)
        else:
            await self._write(dst, data)


@contextlib.asynccontextmanager
async def reply_cutters(
    etcd: EtcdCluster, policy: ChaosPolicy, seed: int = 0
) -> AsyncIterator[list[ReplyCutter]]:
    """One ReplyCutter in front of each member; ``endpoints_of(proxies)`` are the URLs."""
    proxies = [
        ReplyCutter(Address("tcp", "127.0.0.1", m.client_port), policy, seed=seed + i)
        for i, m in enumerate(etcd.members)
    ]
    async with trio.open_nursery() as nursery:
        for proxy in proxies:
            await proxy.listen(Address("tcp", "127.0.0.1", 0))
            await nursery.start(proxy.serve)
        try:
            yield proxies
        finally:
            nursery.cancel_scope.cancel()
            for proxy in proxies:
                await proxy.aclose()


def endpoints_of(proxies: Sequence[ChaosProxy]) -> list[str]:
    """The http:// URLs the proxies listen on."""
    urls = []
    for proxy in proxies:
        assert proxy.address is not None
        urls.append(f"http://127.0.0.1:{proxy.address.port}")
    return urls


# ---------------------------------------------------------------- the shim: etcd crash points

#: The fault kit's shim, plus two crash points around the etcd txn of the sign path (the
#: check-and-set is the only txn a signing KMS sends): before it is sent, and once its
#: answer came back (applied in etcd, nothing saved locally yet).
HA_SHIM = SHIM.replace(
    "from kms.cli import main",
    """import kms.ha.client
real_txn = kms.ha.client.EtcdClient.txn

async def crashing_txn(self, body):
    point("before_txn")
    result = await real_txn(self, body)
    point("after_txn")
    return result

kms.ha.client.EtcdClient.txn = crashing_txn

from kms.cli import main""",
)
assert HA_SHIM != SHIM

#: Crash points along one signature with [etcd], in order: before the check-and-set txn,
#: after it (won in etcd, nothing local yet), inside the local save (before its temp file),
#: after the save before signing, after signing before the reply, after the reply.
HA_CRASH_POINTS = (
    "before_txn",
    "after_txn",
    "before_create",
    "before_fsync",
    "after_save",
    "before_reply",
    "after_reply",
)


# ---------------------------------------------------------------- hosts, nodes, steps


@attrs.define(eq=False)
class Host:
    """One KMS host: its folder, keys, config, node, and the `tmkms start` running now."""

    name: str
    root: Path
    chain_id: str
    node: SimulatedNode
    ledger: Ledger
    config: Path | None = None
    kms: KmsProcess | None = None
    client: SignerClient | None = None
    lives: list[KmsProcess] = attrs.field(factory=list)
    exits: list[int] = attrs.field(factory=list)
    gone: trio.Event = attrs.field(factory=trio.Event)
    blocks: dict[int, BlockId] = attrs.field(factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.chain_id}.json"

    @property
    def up(self) -> bool:
        return self.client is not None

    def write_config(
        self, endpoints: Sequence[str], prefix: str, etcd_extra: Sequence[str] = ()
    ) -> Path:
        """tmkms.toml: the chain, softsign, one validator (its node), and ``[etcd]``."""
        assert self.node.address is not None
        text = chain_toml(self.chain_id, self.root)
        text += validator_toml(self.chain_id, str(self.node.address), self.root, "v0.38")
        quoted = ", ".join(f'"{e}"' for e in endpoints)
        text += "\n".join(
            [
                "[etcd]",
                f"endpoints = [{quoted}]",
                f'prefix = "{prefix}"',
                f'host = "{self.name}"',
                f"timeout = {ETCD_TIMEOUT}",
                *etcd_extra,
                "",
            ]
        )
        self.config = self.root / "tmkms.toml"
        self.config.write_text(text)
        return self.config

    def output(self) -> list[str]:
        """Every line every run of this host printed."""
        return [line for kms in self.lives for line in kms.lines]

    async def life(
        self,
        shim: dict[str, str] | None,
        extra: Sequence[str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run `tmkms start` until it exits (crash, kill): connected once started."""
        assert self.config is not None
        self.gone = trio.Event()
        env = None if shim is None else {"FAULTKIT_STATE_DIR": str(self.state_dir), **shim}
        try:
            async with start_kms(self.config, *extra, shim=env) as kms:
                self.kms = kms
                self.lives.append(kms)
                with trio.fail_after(30):
                    self.client = await self.node.accept()
                task_status.started()
                self.exits.append(await kms.process.wait())
        finally:
            self.client = None
            self.gone.set()


def refusal_cause(code: int, description: str) -> str:
    """A refusal's cause as the node sees it: the shared watermark's cause, or double sign."""
    if match := re.match(r"shared watermark (\w+):", description):
        return match[1]
    return "double_sign" if code == 2 else f"code{code}"


@attrs.define
class StepResult:
    """One height/round/step asked of every host at once."""

    hrs: tuple[int, int, int]
    started: float
    ended: float = 0.0
    signed: list[str] = attrs.field(factory=list)  # host names that returned a signature
    refused: dict[str, str] = attrs.field(factory=dict)  # host name -> cause
    down: list[str] = attrs.field(factory=list)  # hosts down, or that went away mid-request


@attrs.define
class Checker:
    """Every step asked, and every signature that reached a node or a KMS log."""

    steps: list[StepResult] = attrs.field(factory=list)
    causes: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def record(self, result: StepResult) -> None:
        self.steps.append(result)
        self.causes.update(result.refused.values())

    def books(self, hosts: Sequence[Host]) -> tuple[SignedBook, SignedBook]:
        """Every signature the nodes got (by full block ID), and every one the KMSes logged."""
        received, logged = SignedBook(), SignedBook()
        for host in hosts:
            for hrs, blocks in host.ledger.exact.slots.items():
                for full in blocks:
                    received.add(*hrs, full)
            for kms in host.lives:
                log_book(kms.lines, logged)
        return received, logged

    def conflicting_pairs(self, hosts: Sequence[Host]) -> int:
        """Pairs of signatures that conflict, over both books."""
        pairs = 0
        for book in self.books(hosts):
            groups = [*book.slots.values(), *book.vote_blocks.values()]
            pairs += sum(math.comb(len(blocks), 2) for blocks in groups)
        return pairs

    def liveness(self, outages: Sequence[tuple[float, float]]) -> tuple[int, int]:
        """(steps signed by at least one host, steps) among the steps that overlap no
        quorum outage."""
        eligible = [
            s for s in self.steps if not any(s.started < end and s.ended > start for start, end in outages)
        ]
        return sum(1 for s in eligible if s.signed), len(eligible)


class Fleet:
    """The hosts of one test, their nodes, and the step driver."""

    def __init__(
        self, tmp_path: Path, nursery: trio.Nursery, chain_id: str | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.chain_id = chain_id or f"ha-{uuid.uuid4().hex[:8]}"
        self.prefix = f"/ha-e2e-{uuid.uuid4().hex[:8]}/"
        self.consensus = SigningKey.generate()
        self.hosts: list[Host] = []
        self.checker = Checker()
        self.rng = random.Random(self.chain_id)
        self.height = 1

    @property
    def key(self) -> str:
        """The chain's watermark key in etcd."""
        return f"{self.prefix}{self.chain_id}"

    async def add(
        self, name: str, endpoints: Sequence[str], etcd_extra: Sequence[str] = ()
    ) -> Host:
        """A host with its own folder, identity and node; the consensus key is a copy."""
        root = self.tmp_path / name
        write_key(root / "secrets" / f"{self.chain_id}.key", self.consensus)
        write_key(root / "secrets" / "kms-identity.key", SigningKey.generate())
        (root / "state").mkdir(parents=True)
        node = SimulatedNode(chain_id=self.chain_id)
        await node.listen(Address(scheme="unix", path=str(self.tmp_path / f"{name}.sock")))
        ledger = Ledger(self.chain_id, self.consensus.verify_key)
        host = Host(name, root, self.chain_id, node, ledger)
        host.write_config(endpoints, self.prefix, etcd_extra)
        self.hosts.append(host)
        return host

    async def start(
        self, host: Host, shim: dict[str, str] | None = None, *extra: str
    ) -> None:
        """Start `tmkms start` for ``host``; returns once its node accepted it."""
        await self.nursery.start(host.life, shim, extra)

    async def kill(self, host: Host) -> None:
        """SIGKILL ``host``'s KMS and wait until it is gone."""
        if host.kms is not None and host.kms.process.returncode is None:
            host.kms.send_signal(signal.SIGKILL)
        await host.gone.wait()

    def block_of(self, host: Host, height: int) -> BlockId:
        """``host``'s node's block at ``height``: a different one for every host."""
        if height not in host.blocks:
            host.blocks[height] = block(self.rng)
        return host.blocks[height]

    async def _ask(self, host: Host, hrs: tuple[int, int, int], result: StepResult) -> None:
        height, round_, step = hrs
        client = host.client
        if client is None:
            result.down.append(host.name)
            return
        block_id = self.block_of(host, height)
        try:
            if step == 0:
                reply: Any = await client.sign_proposal(make_proposal(height, round_, block_id))
                signed = host.ledger.proposal(reply)
            else:
                kind = SignedMsgType.PREVOTE if step == 1 else SignedMsgType.PRECOMMIT
                reply = await client.sign_vote(make_vote(kind, height, round_, block_id))
                signed = host.ledger.vote(reply)
        except LINK_ERRORS:
            result.down.append(host.name)
            return
        if signed:
            result.signed.append(host.name)
        else:
            result.refused[host.name] = refusal_cause(reply.error.code, reply.error.description)

    async def step(self) -> StepResult:
        """Ask every host for the next step at once, each over its own block."""
        index = len(self.checker.steps)
        hrs = (self.height + index // 3, 0, index % 3)
        result = StepResult(hrs, time.monotonic())
        async with trio.open_nursery() as nursery:
            for host in self.hosts:
                nursery.start_soon(self._ask, host, hrs, result)
        result.ended = time.monotonic()
        self.checker.record(result)
        return result

    async def steps(self, count: int) -> list[StepResult]:
        return [await self.step() for _ in range(count)]

    async def steps_for(self, seconds: float) -> list[StepResult]:
        """Step for ``seconds`` (at least one step)."""
        done = [await self.step()]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            done.append(await self.step())
        return done

    async def wait_signed(self, timeout: float = 10.0) -> StepResult:
        """Step until a step is signed by some host; AssertionError after ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            result = await self.step()
            if result.signed:
                return result
            assert time.monotonic() < end, f"nothing signed for {timeout} s"

    def summary(self, outages: Sequence[tuple[float, float]] = ()) -> dict[str, int | str]:
        """The checker's counts (and the refusals by cause, as one word)."""
        signed, eligible = self.checker.liveness(outages)
        received, logged = self.checker.books(self.hosts)
        causes = ",".join(f"{k}:{v}" for k, v in sorted(self.checker.causes.items()))
        return {
            "hosts": len(self.hosts),
            "steps": len(self.checker.steps),
            "signatures": received.count,
            "logged": logged.count,
            "conflicting_pairs": self.checker.conflicting_pairs(self.hosts),
            "live_steps": signed,
            "quorum_up_steps": eligible,
            "refused": causes or "none",
        }

    async def aclose(self) -> None:
        for host in self.hosts:
            await host.node.aclose()


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """A Fleet whose KMS processes and nodes are stopped on exit."""
    async with trio.open_nursery() as nursery:
        made = Fleet(tmp_path, nursery)
        try:
            yield made
        finally:
            for host in made.hosts:
                if host.kms is not None and host.kms.process.returncode is None:
                    host.kms.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                for host in made.hosts:
                    await host.gone.wait()
            with trio.CancelScope(shield=True):
                await made.aclose()
            nursery.cancel_scope.cancel()


def assert_safe(f: Fleet, scenario: str, outages: Sequence[tuple[float, float]] = ()) -> dict[str, int | str]:
    """Print the counts, then: no conflicting pair, and liveness >= 90 % with a quorum."""
    counts = f.summary(outages)
    ha_counted(scenario, **counts)
    received, logged = f.checker.books(f.hosts)
    assert not received.conflicts(), received.conflicts()[:5]
    assert not logged.conflicts(), logged.conflicts()[:5]
    assert counts["conflicting_pairs"] == 0
    live, eligible = int(counts["live_steps"]), int(counts["quorum_up_steps"])
    assert eligible > 0
    assert live >= 0.9 * eligible, counts
    return counts


# ---------------------------------------------------------------- tests


async def test_two_hosts_conflicting_blocks_calm(etcd: EtcdCluster, tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", list(reversed(etcd.endpoints)))
            t0 = time.monotonic()
            await f.start(a)
            await f.start(b)
            t1 = time.monotonic()
            await f.steps(300)
            t2 = time.monotonic()
            print(f"start {t1 - t0:.2f}s steps {t2 - t1:.2f}s")
            wins = collections.Counter(n for s in f.checker.steps for n in s.signed)
            print(wins)
    assert_safe(f, "calm")
