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
up), and refusals by cause. Each scenario's counts are printed in the terminal summary
("ha end to end").

Then, each measured against the same real processes: fail closed (quorum lost: every
request refused within `timeout` + 0.5 s, nothing signed; signing resumes by itself within
3 s), failover (next signature after the etcd leader is killed, median of five; a KMS
killed while its peer signs every step), a new host starting without etcd, bad input (a
malformed or foreign value under the key, a TLS mismatch, an endpoint that is no etcd, a
wrong password, a forgotten token, unusable files: a refusal or a startup error naming the
cause, no traceback, no password in any line), a watermark deleted from etcd, and
``/metrics`` + ``/readyz`` while the quorum goes and comes back.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import random
import re
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from nacl.signing import SigningKey

from kms.ha.watermark import parse_watermark
from kms.protocol.messages import BlockId, SignedMsgType
from kms.sim.consensus import make_proposal, make_vote
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address
from tests.fault.kit import (
    LINK_ERRORS,
    SHIM,
    Ledger,
    SignedBook,
    block,
    log_book,
)
from tests.support.chaos import ChaosPolicy, ChaosProxy
from tests.support.etcd import EtcdCluster, b64, running_cluster
from tests.support.kmsproc import (
    TMKMS,
    KmsProcess,
    chain_toml,
    tmkms_start,
    validator_toml,
    write_key,
)
from tests.support.metrics import http_get, metrics_base, scrape, value, wait_ready

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
            with trio.CancelScope(shield=True):
                for proxy in proxies:
                    await proxy.aclose()
            nursery.cancel_scope.cancel()


def proxy_faults(proxies: Sequence[ChaosProxy]) -> dict[str, int]:
    """The faults the proxies made, summed, as ``proxy_<kind>`` counts."""
    faults = collections.Counter[str]()
    for proxy in proxies:
        faults.update(proxy.stats.faults)
    return {f"proxy_{kind}": count for kind, count in sorted(faults.items())}


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

#: Crash points along one signature with [etcd]: before the check-and-set txn, once its
#: answer came back (won or lost in etcd, the state file not moved yet), inside the local
#: save (before its temp file, before its fsync: when the spare is prepared beside the txn,
#: these fall while the txn is in flight), after the save before signing, after signing
#: before the reply, after the reply.
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


def _set_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


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
    gone: trio.Event = attrs.field(factory=_set_event)  # set while no KMS runs
    blocks: dict[int, BlockId] = attrs.field(factory=dict)
    endpoints: list[str] = attrs.field(factory=list)
    prefix: str = ""
    etcd_extra: list[str] = attrs.field(factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def write_config(
        self, endpoints: Sequence[str], prefix: str, etcd_extra: Sequence[str] = ()
    ) -> Path:
        """tmkms.toml: the chain, softsign, one validator (its node), and ``[etcd]``."""
        assert self.node.address is not None
        self.endpoints, self.prefix, self.etcd_extra = list(endpoints), prefix, list(etcd_extra)
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

    def become_new_host(self, name: str) -> None:
        """Replace this host by a new one: empty state folder, new identity, new name."""
        assert self.kms is None or self.kms.process.returncode is not None
        for path in self.state_dir.iterdir():
            path.unlink()
        write_key(self.root / "secrets" / "kms-identity.key", SigningKey.generate())
        self.name = name
        self.write_config(self.endpoints, self.prefix, self.etcd_extra)

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
            launcher = TMKMS if shim is None else [sys.executable, "-c", HA_SHIM]
            async with tmkms_start(self.config, *extra, env=env, launcher=launcher) as kms:
                self.kms = kms
                self.lives.append(kms)
                with trio.fail_after(30):
                    self.client = await self.node.accept()
                task_status.started()
                self.exits.append(await kms.process.wait())
        finally:
            self.client = None
            self.gone.set()


async def state_init(host: Host) -> str:
    """Run `tmkms state init` with ``host``'s config; its output (it must succeed)."""
    assert host.config is not None
    command = [*TMKMS, "state", "init", "-c", str(host.config)]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


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
    seconds: dict[str, float] = attrs.field(factory=dict)  # host name -> its reply's delay


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
            s
            for s in self.steps
            if not any(s.started < end and s.ended > start for start, end in outages)
        ]
        return sum(1 for s in eligible if s.signed), len(eligible)


class Fleet:
    """The hosts of one test, their nodes, and the step driver."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery, chain_id: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.chain_id = chain_id or f"ha-{uuid.uuid4().hex[:8]}"
        self.prefix = f"/ha-e2e-{uuid.uuid4().hex[:8]}/"
        self.consensus = SigningKey.generate()
        self.hosts: list[Host] = []
        self.checker = Checker()
        self.rng = random.Random(self.chain_id)
        self.height = 1
        self.agree = False  # True: every node asks for the same block (no conflict asked)
        self._stepped = trio.Event()  # set (and replaced) at the end of every step
        self._shared_blocks: dict[int, BlockId] = {}

    @property
    def key(self) -> str:
        """The chain's watermark key in etcd."""
        return f"{self.prefix}{self.chain_id}"

    async def add(
        self,
        name: str,
        endpoints: Sequence[str],
        etcd_extra: Sequence[str] = (),
        *,
        init: bool = True,
    ) -> Host:
        """A host with its own folder, identity and node; the consensus key is a copy.

        The first host (``init``) creates the chain's watermark with `tmkms state init`, as
        an operator does once on a new etcd; the sign path never creates it."""
        root = self.tmp_path / name
        write_key(root / "secrets" / f"{self.chain_id}.key", self.consensus)
        write_key(root / "secrets" / "kms-identity.key", SigningKey.generate())
        (root / "state").mkdir(parents=True)
        node = SimulatedNode(chain_id=self.chain_id)
        await node.listen(Address(scheme="unix", path=str(self.tmp_path / f"{name}.sock")))
        ledger = Ledger(self.chain_id, self.consensus.verify_key)
        host = Host(name, root, self.chain_id, node, ledger)
        host.write_config(endpoints, self.prefix, etcd_extra)
        if init and not self.hosts:
            await state_init(host)
        self.hosts.append(host)
        return host

    async def start(self, host: Host, shim: dict[str, str] | None = None, *extra: str) -> None:
        """Start `tmkms start` for ``host``; returns once its node accepted it."""
        await self.nursery.start(host.life, shim, extra)

    async def kill(self, host: Host) -> None:
        """SIGKILL ``host``'s KMS and wait until it is gone."""
        if host.kms is not None and host.kms.process.returncode is None:
            host.kms.send_signal(signal.SIGKILL)
        await host.gone.wait()

    def block_of(self, host: Host, height: int) -> BlockId:
        """``host``'s node's block at ``height``: a different one for every host (the same
        for all while ``agree``)."""
        blocks = self._shared_blocks if self.agree else host.blocks
        if height not in blocks:
            blocks[height] = block(self.rng)
        return blocks[height]

    async def _ask(
        self,
        host: Host,
        hrs: tuple[int, int, int],
        result: StepResult,
        block_id: BlockId | None = None,
    ) -> None:
        height, round_, step = hrs
        client = host.client
        if client is None:
            result.down.append(host.name)
            return
        block_id = self.block_of(host, height) if block_id is None else block_id
        sent = time.monotonic()
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
        result.seconds[host.name] = time.monotonic() - sent
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
        self._stepped.set()
        self._stepped = trio.Event()
        return result

    async def first_signed(
        self, *, asked_after: float = 0.0, answered_after: float = 0.0
    ) -> StepResult:
        """The first signed step asked after ``asked_after`` and answered after
        ``answered_after`` (waiting for the steps another task runs)."""
        while True:
            for result in self.checker.steps:
                if (
                    result.signed
                    and result.started >= asked_after
                    and result.ended > answered_after
                ):
                    return result
            await self._stepped.wait()

    async def ask_at(self, host: Host, hrs: tuple[int, int, int], block_id: BlockId) -> StepResult:
        """Ask ``host`` alone for ``block_id`` at ``hrs`` (not counted as a step)."""
        result = StepResult(hrs, time.monotonic())
        await self._ask(host, hrs, result, block_id)
        result.ended = time.monotonic()
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


def assert_safe(
    f: Fleet, scenario: str, outages: Sequence[tuple[float, float]] = ()
) -> dict[str, int | str]:
    """Print the counts, then: no conflicting pair, liveness >= 90 % while a quorum is up,
    and no traceback in any KMS output."""
    counts = f.summary(outages)
    ha_counted(scenario, **counts)
    for host in f.hosts:
        assert_clean_output(host.output())
    received, logged = f.checker.books(f.hosts)
    assert not received.conflicts(), received.conflicts()[:5]
    assert not logged.conflicts(), logged.conflicts()[:5]
    assert counts["conflicting_pairs"] == 0
    live, eligible = int(counts["live_steps"]), int(counts["quorum_up_steps"])
    assert eligible > 0
    assert live >= 0.9 * eligible, counts
    return counts


@attrs.define
class Timeline:
    """When the etcd cluster had no quorum (for liveness) and what was done to it."""

    outages: list[tuple[float, float]] = attrs.field(factory=list)
    #: (lost, regained): from the moment the quorum was surely gone to the moment it came back
    no_quorum: list[tuple[float, float]] = attrs.field(factory=list)
    events: collections.Counter[str] = attrs.field(factory=collections.Counter)

    async def kill_leader(self, etcd: EtcdCluster, down: float) -> None:
        """SIGKILL the leader, leave it down ``down`` seconds, restart it, wait for a leader."""
        leader = await in_thread(etcd.wait_leader, 20.0)
        await in_thread(etcd.kill, leader)
        self.events["leader_killed"] += 1
        await trio.sleep(down)
        await in_thread(etcd.restart, leader)
        await in_thread(etcd.wait_leader, 20.0)

    async def pause_member(self, etcd: EtcdCluster, leader: bool, down: float) -> None:
        """SIGSTOP the leader (or a follower) for ``down`` seconds, then SIGCONT it."""
        current = await in_thread(etcd.wait_leader, 20.0)
        index = current if leader else (current + 1) % len(etcd.members)
        await in_thread(etcd.stop, index)
        self.events["leader_stopped" if leader else "follower_stopped"] += 1
        await trio.sleep(down)
        await in_thread(etcd.cont, index)
        await in_thread(etcd.wait_leader, 20.0)

    async def lose_quorum(self, etcd: EtcdCluster, down: float) -> float:
        """Stop two of three members for ``down`` seconds; returns when the quorum is back."""
        started = time.monotonic()
        await in_thread(etcd.lose_quorum)
        lost = time.monotonic()
        self.events["quorum_lost"] += 1
        await trio.sleep(down)
        regaining = time.monotonic()
        await in_thread(etcd.regain_quorum)
        back = time.monotonic()
        self.outages.append((started, back))
        self.no_quorum.append((lost, regaining))
        return back


def assert_nothing_signed_without_quorum(f: Fleet, timeline: Timeline) -> int:
    """Every request asked after the quorum was lost, and answered before it came back, was
    refused; returns how many such requests there were."""
    count = 0
    for lost, regaining in timeline.no_quorum:
        for result in f.checker.steps:
            if result.started < lost:
                continue
            for name, seconds in result.seconds.items():
                if result.started + seconds <= regaining:
                    count += 1
                    assert name not in result.signed, f"signed without a quorum: {result}"
    return count


async def drive(f: Fleet, stop: trio.Event) -> None:
    """Ask for step after step until ``stop``."""
    while not stop.is_set():
        await f.step()


#: A chaos proxy's policy on etcd's replies: small delays, replies cut short after the
#: request went through (the txn may be applied: an ambiguous outcome), short stalls.
REPLY_CHAOS = ChaosPolicy(delay=0.2, max_delay=0.03, drop=0.04, stall=0.01, stall_time=0.4)


async def test_two_hosts_never_double_sign_while_etcd_fails(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Two hosts asked for conflicting blocks at every step while the etcd leader is killed
    and restarted, the leader and then a follower are paused, and the quorum is lost and
    regained; host B reaches etcd only through proxies that delay and cut etcd's replies."""
    timeline = Timeline()
    with trio.fail_after(LIMIT):
        async with reply_cutters(etcd, REPLY_CHAOS, seed=1) as proxies, fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", endpoints_of(proxies)[::-1])
            await f.start(a)
            await f.start(b)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drive, f, stop)
                await trio.sleep(2.0)
                await timeline.kill_leader(etcd, down=1.5)
                await trio.sleep(1.0)
                await timeline.pause_member(etcd, leader=True, down=1.5)
                await trio.sleep(1.0)
                await timeline.pause_member(etcd, leader=False, down=1.0)
                await trio.sleep(1.0)
                await timeline.lose_quorum(etcd, down=2.5)
                await trio.sleep(3.0)
                stop.set()
            blind = assert_nothing_signed_without_quorum(f, timeline)
    faults = proxy_faults(proxies)
    counts = assert_safe(f, "2 hosts, etcd faults + reply chaos", timeline.outages)
    ha_counted(
        "2 hosts, etcd faults + reply chaos",
        refused_without_quorum=blind,
        **{f"etcd_{k}": v for k, v in timeline.events.items()},
        **faults,
    )
    assert blind > 0
    assert faults.get("proxy_drop", 0) > 0, faults
    assert int(counts["steps"]) > 500


def unsigned_run(steps: Sequence[StepResult]) -> int:
    """The longest run of consecutive steps nobody signed."""
    longest = current = 0
    for result in steps:
        current = 0 if result.signed else current + 1
        longest = max(longest, current)
    return longest


async def step_until_gone(f: Fleet, host: Host, limit: int = 400) -> int:
    """Step until ``host``'s KMS exited (crashed); returns the steps it took."""
    for count in itertools.count(1):
        await f.step()
        if host.gone.is_set():
            return count
        assert count < limit, f"{host.name} did not crash within {limit} steps"
    raise AssertionError("unreachable")


async def test_a_kms_crashing_at_each_point_of_its_sign_path(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Host A is crashed (os._exit through the fault shim) at each point of its sign path,
    etcd's txn included, and restarted, every other time as a new host with an empty
    state; host B keeps signing meanwhile; conflicting blocks at every step."""
    rng = random.Random(12)
    points = [*HA_CRASH_POINTS, "mid_write", "before_replace", "before_dir_fsync", "after_sign"]
    crashes, new_hosts, b_alone = 0, 0, []
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", list(reversed(etcd.endpoints)))
            await f.start(b)
            for number, point in enumerate(points):
                shim = {
                    "FAULTKIT_CRASH_AT": point,
                    "FAULTKIT_CRASH_HIT": str(rng.randint(2, 6)),
                    "FAULTKIT_POWER_CUT": "1" if number % 3 == 0 else "0",
                }
                await f.start(a, shim)
                await step_until_gone(f, a)
                assert a.exits[-1] == CRASH_CODE, (point, a.exits, a.output()[-20:])
                crashes += 1
                before = len(f.checker.steps)
                await f.steps(15)  # B alone
                b_alone.append(sum(1 for s in f.checker.steps[before:] if s.signed))
                if number % 2 == 1:
                    a.become_new_host(f"kms-a{number}")
                    new_hosts += 1
            await f.start(a)  # and once more without faults
            await f.steps(150)
    counts = assert_safe(f, "2 hosts, KMS crashed at sign path points")
    gap = unsigned_run(f.checker.steps)
    ha_counted(
        "2 hosts, KMS crashed at sign path points",
        crashes=crashes,
        new_hosts=new_hosts,
        longest_unsigned_run=gap,
    )
    # B alone loses at most the rest of a height A had started on its own block
    assert all(signed >= 12 for signed in b_alone), b_alone
    assert gap <= 3
    assert int(counts["live_steps"]) >= 0.9 * int(counts["steps"])


async def kill_and_restart(
    f: Fleet, host: Host, rng: random.Random, stop: trio.Event, counts: collections.Counter[str]
) -> None:
    """SIGKILL ``host`` at random instants and restart it; every other time as a new host."""
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.5, 2.0))
        await f.kill(host)
        counts["kms_killed"] += 1
        await trio.sleep(rng.uniform(0.1, 0.8))
        if counts["kms_killed"] % 2 == 0:
            host.become_new_host(f"{host.name.split('.')[0]}.{counts['kms_killed']}")
            counts["new_hosts"] += 1
        await f.start(host)


async def test_three_hosts_never_double_sign_while_etcd_and_a_kms_fail(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Three hosts, conflicting blocks at every step; the etcd faults of the two-host test
    while host C is SIGKILLed at random instants and restarted (also as a new, empty host)
    and host B talks to etcd through reply-cutting proxies."""
    timeline = Timeline()
    kills: collections.Counter[str] = collections.Counter()
    rng = random.Random(3)
    with trio.fail_after(LIMIT):
        async with reply_cutters(etcd, REPLY_CHAOS, seed=7) as proxies, fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", endpoints_of(proxies))
            c = await f.add("kms-c", etcd.endpoints[::-1])
            for host in (a, b, c):
                await f.start(host)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drive, f, stop)
                nursery.start_soon(kill_and_restart, f, c, rng, stop, kills)
                await trio.sleep(1.5)
                await timeline.kill_leader(etcd, down=1.0)
                await trio.sleep(1.0)
                await timeline.pause_member(etcd, leader=True, down=1.0)
                await trio.sleep(1.0)
                await timeline.lose_quorum(etcd, down=2.5)
                await trio.sleep(2.5)
                stop.set()
            blind = assert_nothing_signed_without_quorum(f, timeline)
    assert_safe(f, "3 hosts, etcd faults + KMS SIGKILL + reply chaos", timeline.outages)
    ha_counted(
        "3 hosts, etcd faults + KMS SIGKILL + reply chaos",
        refused_without_quorum=blind,
        **{f"etcd_{k}": v for k, v in timeline.events.items()},
        **dict(kills),
    )
    assert kills["kms_killed"] >= 3 and kills["new_hosts"] >= 1, kills
    assert blind > 0


async def test_fail_closed_without_quorum_and_resume_by_itself(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Quorum lost: every request asked after the loss is refused (a RemoteSignerError
    reply, the connection stays up) within `timeout` + 0.5 s, nothing signed; quorum back:
    a signature again within 3 s, without anyone touching the KMS. Twice."""
    latencies: list[float] = []
    resumes: list[float] = []
    refused_during = 0
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", etcd.endpoints[::-1])
            await f.start(a)
            await f.start(b)
            for _ in range(2):
                await f.steps(30)
                await in_thread(etcd.lose_quorum)
                lost = time.monotonic()
                for result in await f.steps_for(2.5):
                    assert not result.down, result  # the connections stay up
                    assert not result.signed, f"signed without a quorum: {result}"
                    assert len(result.refused) == 2
                    latencies.extend(result.seconds.values())
                    refused_during += 2
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drive, f, stop)
                    regaining = time.monotonic()
                    await in_thread(etcd.regain_quorum)
                    first = await f.first_signed(answered_after=regaining)
                    stop.set()
                resumes.append(first.ended - regaining)
                assert lost < regaining
                await f.steps(30)
    counts = assert_safe(f, "fail closed: quorum lost twice")
    ha_counted(
        "fail closed: quorum lost twice",
        refused_without_quorum=refused_during,
        refusal_max_ms=round(max(latencies) * 1000),
        resume_ms=",".join(str(round(r * 1000)) for r in resumes),
    )
    assert counts["conflicting_pairs"] == 0
    assert max(latencies) <= ETCD_TIMEOUT + 0.5, latencies
    assert max(resumes) <= 3.0, resumes


async def test_failover_after_the_etcd_leader_is_killed(etcd: EtcdCluster, tmp_path: Path) -> None:
    """The etcd leader SIGKILLed while two hosts sign: the next signature (on a request asked
    after the kill) within 2.5 s, median of five kills."""
    delays: list[float] = []
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", etcd.endpoints[::-1])
            await f.start(a)
            await f.start(b)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drive, f, stop)
                for _ in range(5):
                    await trio.sleep(0.5)
                    leader = await in_thread(etcd.wait_leader, 20.0)
                    killed = time.monotonic()
                    await in_thread(etcd.kill, leader)
                    first = await f.first_signed(asked_after=killed)
                    delays.append(first.ended - killed)
                    await in_thread(etcd.restart, leader)
                    await in_thread(etcd.wait_leader, 20.0)
                stop.set()
    median = statistics.median(delays)
    assert_safe(f, "failover: etcd leader killed x5")
    ha_counted(
        "failover: etcd leader killed x5",
        next_signature_ms=",".join(str(round(d * 1000)) for d in delays),
        median_ms=round(median * 1000),
    )
    assert median <= 2.5, delays


async def test_failover_after_a_kms_is_killed(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Both nodes ask for the same blocks (as a validator's nodes do): both hosts sign every
    step; one KMS is SIGKILLed mid-stream and the other signs every single step on, with
    no gap in time."""
    rng = random.Random(5)
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            f.agree = True
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", etcd.endpoints[::-1])
            await f.start(a)
            await f.start(b)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drive, f, stop)
                for _ in range(3):
                    await trio.sleep(rng.uniform(0.5, 1.0))
                    await f.kill(a)
                    await trio.sleep(rng.uniform(0.5, 1.0))
                    await f.start(a)
                stop.set()
    signed_by_b = [s for s in f.checker.steps if "kms-b" in s.signed]
    gaps = [y.ended - x.ended for x, y in itertools.pairwise(signed_by_b)]
    both = sum(1 for s in f.checker.steps if len(s.signed) == 2)
    assert_safe(f, "failover: one KMS killed x3")
    ha_counted(
        "failover: one KMS killed x3",
        signed_by_survivor=len(signed_by_b),
        signed_by_both=both,
        survivor_max_gap_ms=round(max(gaps) * 1000),
    )
    assert len(signed_by_b) == len(f.checker.steps)  # the survivor signed every step
    assert both > 0
    assert max(gaps) < 0.5, max(gaps)


# ---------------------------------------------------------------- bad input, end to end


def assert_clean_output(lines: Sequence[str], *secrets: str) -> None:
    """No traceback, and no secret, in any line a KMS printed."""
    for line in lines:
        assert "Traceback" not in line, "\n".join(lines[-30:])
        for secret in secrets:
            assert secret not in line, f"a secret in the output: {line}"


async def refused_with(f: Fleet, host: Host, cause: str, count: int = 3) -> None:
    """``count`` steps: each a RemoteSignerError with ``cause`` for ``host``, never a
    signature, and an ERROR line per refusal naming the chain and the cause."""
    assert host.kms is not None
    for result in await f.steps(count):
        assert not result.signed and not result.down, result
        assert result.refused == {host.name: cause}, result
    pattern = rf"ERROR .*\[{re.escape(f.chain_id)}\] shared watermark {cause}: refusing to sign"
    await host.kms.wait_for(pattern, count=count, timeout=10)
    assert not host.ledger.signatures


async def test_a_malformed_or_foreign_value_under_the_key_is_refused(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """What etcd holds under the chain's key is no tmkms watermark: refused, cause
    malformed, for each of a few such values; nothing signed, no traceback."""
    values = [
        b"not json {",
        b'{"leader": "kms-x", "term": 7}',  # another tool's JSON
        b'{"height":"-1","round":"0","step":1,"block_id":null,"host":"x","nonce":"00"}',
        bytes(range(256)),
    ]
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            await in_thread(etcd.put_value, f.key, values[0])
            await f.start(a)
            await refused_with(f, a, "malformed")
            for value in values[1:]:
                await in_thread(etcd.put_value, f.key, value)
                await refused_with(f, a, "malformed", count=1)
            assert await in_thread(etcd.get_value, f.key) == values[-1]  # left as it was
            assert_clean_output(a.output())
    ha_counted("bad input: malformed values", values=len(values), refused=len(f.checker.steps))


async def not_etcd(stream: trio.SocketStream) -> None:
    """An HTTP server that is no etcd: 200 and an HTML page for anything."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.receive_some(65536)
        page = b"<html><body>It works!</body></html>"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(page)}\r\n\r\n"
        await stream.send_all(head.encode() + page)
        await trio.sleep(0.05)
    await stream.aclose()


@pytest.mark.parametrize("wrong", ["tls", "protocol"])
async def test_an_endpoint_speaking_something_else_is_refused(
    etcd: EtcdCluster, tmp_path: Path, wrong: str
) -> None:
    """https:// to a plain-HTTP etcd member (a TLS mismatch), or http:// to a server that
    is no etcd: each a refusal naming the cause, nothing signed, no traceback."""
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as servers:
            listeners = await servers.start(
                functools.partial(trio.serve_tcp, not_etcd, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            if wrong == "tls":
                endpoints = [f"https://127.0.0.1:{m.client_port}" for m in etcd.members]
            else:
                endpoints = [f"http://127.0.0.1:{port}"]
            async with fleet(tmp_path) as f:
                a = await f.add("kms-a", endpoints, init=False)  # init would fail the same way
                await f.start(a)
                await refused_with(f, a, wrong)
                assert_clean_output(a.output())
            servers.cancel_scope.cancel()
    ha_counted(f"bad input: {wrong} endpoint", refused=len(f.checker.steps))


PASSWORD = "correct-horse-battery-staple-e2e"
WRONG_PASSWORD = "tr0ub4dor-and-3-e2e"
ROOT_PASSWORD = "root-secret-e2e-4711"


async def test_etcd_auth_a_wrong_password_is_refused_and_never_shown(tmp_path: Path) -> None:
    """etcd with auth: the right password signs; a wrong one is a refusal (cause auth); a
    token etcd forgot is replaced by itself; neither password (nor the root's) appears in any
    line either KMS printed."""
    prefix = "/ha-auth/"
    with running_cluster(tmp_path / "etcd", size=1) as cluster:
        await in_thread(cluster.enable_auth, "kms", PASSWORD, prefix, ROOT_PASSWORD)
        with trio.fail_after(LIMIT):
            async with fleet(tmp_path) as f:
                f.prefix = prefix
                auth = ['username = "kms"', f'password_file = "{tmp_path / "password"}"']
                (tmp_path / "password").write_text(PASSWORD + "\n")
                (tmp_path / "wrong").write_text(WRONG_PASSWORD + "\n")
                good = await f.add("kms-good", cluster.endpoints, auth)
                bad = await f.add(
                    "kms-bad",
                    cluster.endpoints,
                    ['username = "kms"', f'password_file = "{tmp_path / "wrong"}"'],
                )
                await f.start(good)
                await f.start(bad)
                for result in await f.steps(6):
                    assert result.signed == ["kms-good"], result
                    assert result.refused == {"kms-bad": "auth"}, result
                assert bad.kms is not None
                await bad.kms.wait_for(
                    rf"ERROR .*\[{f.chain_id}\] shared watermark auth: refusing to sign.*"
                    r"authentication as 'kms' failed",
                    count=6,
                )
                # the member restarts and forgets every token: the good host's is no longer
                # valid; it authenticates again by itself and signs on
                await in_thread(cluster.kill, 0)
                await in_thread(cluster.restart, 0)
                await in_thread(cluster.wait_leader, 20.0)
                restarted = time.monotonic()
                await f.wait_signed(timeout=5)
                resigned = time.monotonic() - restarted
                for result in await f.steps(6):
                    assert result.signed == ["kms-good"], result
                lines = good.output() + bad.output()
                assert_clean_output(lines, PASSWORD, WRONG_PASSWORD, ROOT_PASSWORD)
    ha_counted(
        "bad input: wrong etcd password, stale token",
        steps=len(f.checker.steps),
        signed_again_after_token_loss_ms=round(resigned * 1000),
    )


async def test_an_unusable_etcd_setting_is_a_startup_error(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """A missing password file, an unreadable CA file: `tmkms start` exits at once with one
    line naming the file, no traceback, and never dials its node."""
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            cases = {
                "password": (
                    etcd.endpoints,
                    ['username = "kms"', f'password_file = "{tmp_path / "absent"}"'],
                    str(tmp_path / "absent"),
                ),
                "ca": (
                    [e.replace("http:", "https:") for e in etcd.endpoints],
                    [f'ca_file = "{tmp_path / "no-ca.pem"}"'],
                    str(tmp_path / "no-ca.pem"),
                ),
            }
            for name, (endpoints, extra, named) in cases.items():
                config = a.write_config(endpoints, f.prefix, extra)
                async with tmkms_start(config) as kms:
                    code = await kms.wait(timeout=30)
                assert code != 0, name
                errors = [line for line in kms.lines if "ERROR" in line or "error" in line]
                assert any(named in line for line in errors), kms.lines
                assert_clean_output(kms.lines)
            assert not a.node.clients  # never got as far as dialling
    ha_counted("bad input: unusable [etcd] files", startup_errors=len(cases))


# ---------------------------------------------------------------- /metrics and /readyz


async def test_metrics_and_readiness_follow_etcd(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Through a real `tmkms start --metrics`: won check-and-sets counted while signing;
    quorum lost: `tmkms_etcd_reachable` 0, /readyz 503 naming etcd, refusals counted by
    cause; quorum back: 1 and 200 again, and the won count grows again."""
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            await f.start(a, None, "--metrics", "127.0.0.1:0")
            assert a.kms is not None
            base = await metrics_base(a.kms)
            doc = await wait_ready(base, True)
            assert doc["etcd"]["reachable"] is True
            await f.steps(30)
            first = await scrape(base)
            won = value(first, "tmkms_ha_cas_total", chain_id=f.chain_id, outcome="won")
            assert won >= 30  # one per signature (and the watermark's creation)
            assert value(first, "tmkms_etcd_reachable") == 1

            await in_thread(etcd.lose_quorum)
            lost = time.monotonic()
            await f.steps(2)
            doc = await wait_ready(base, False, timeout=10)
            not_ready = time.monotonic() - lost
            assert doc["etcd"]["reachable"] is False and doc["etcd"]["last_error"]
            during = await scrape(base)
            assert value(during, "tmkms_etcd_reachable") == 0
            refused = sum(
                v
                for (name, labels), v in during.items()
                if name == "tmkms_ha_cas_total" and ("outcome", "refused") in labels
            )
            assert refused >= 2
            assert value(during, "tmkms_ha_cas_total", outcome="won") == value(
                first, "tmkms_ha_cas_total", outcome="won"
            )

            await in_thread(etcd.regain_quorum)
            back = time.monotonic()
            doc = await wait_ready(base, True, timeout=10)
            ready_again = time.monotonic() - back
            await f.wait_signed(timeout=5)
            await f.steps(10)
            after = await scrape(base)
            assert value(after, "tmkms_etcd_reachable") == 1
            assert value(after, "tmkms_ha_cas_total", outcome="won") >= won + 10
            status, _, _ = await http_get(f"{base}/readyz")
            assert status == 200
    ha_counted(
        "metrics: quorum lost and back",
        won_before=int(won),
        refused_during=int(refused),
        not_ready_after_ms=round(not_ready * 1000),
        ready_again_after_ms=round(ready_again * 1000),
    )


# ---------------------------------------------------------------- the soak


#: How long the soak injects faults (seconds); the suite runs it (it is marked slow).
SOAK_SECONDS = 40.0


def crash_shim(rng: random.Random) -> dict[str, str]:
    """The fault shim set to crash at a random point of the sign path, some signatures on."""
    points = [*HA_CRASH_POINTS, "mid_write", "before_replace", "before_dir_fsync", "after_sign"]
    return {
        "FAULTKIT_CRASH_AT": rng.choice(points),
        "FAULTKIT_CRASH_HIT": str(rng.randint(5, 80)),
        "FAULTKIT_POWER_CUT": rng.choice("01"),
    }


async def crash_and_restart(
    f: Fleet, host: Host, rng: random.Random, counts: collections.Counter[str]
) -> None:
    """Whenever ``host`` crashed at its crash point, restart it (sometimes as a new host)
    with another crash point; until cancelled."""
    while True:
        await host.gone.wait()
        assert host.exits[-1] == CRASH_CODE, host.output()[-20:]
        counts["kms_crashed"] += 1
        if rng.random() < 0.4:
            host.become_new_host(f"{host.name.split('.')[0]}.{counts['kms_crashed']}")
            counts["new_hosts"] += 1
        await f.start(host, crash_shim(rng))


@pytest.mark.slow
async def test_soak_three_hosts_every_fault_at_random(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Three hosts, conflicting blocks at every step, for SOAK_SECONDS of random faults:
    host A crashes at random points of its sign path and comes back (often as a new, empty
    host), host C is SIGKILLed at random instants, host B talks through reply-cutting
    proxies, and etcd loses its leader, has members paused, and loses its quorum."""
    rng = random.Random(2026)
    timeline = Timeline()
    kms_faults: collections.Counter[str] = collections.Counter()
    with trio.fail_after(SOAK_SECONDS + LIMIT):
        async with reply_cutters(etcd, REPLY_CHAOS, seed=11) as proxies, fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", endpoints_of(proxies)[::-1])
            c = await f.add("kms-c", etcd.endpoints[::-1])
            await f.start(a, crash_shim(rng))
            await f.start(b)
            await f.start(c)
            stop = trio.Event()
            async with trio.open_nursery() as driving:
                driving.start_soon(drive, f, stop)
                async with trio.open_nursery() as faults:
                    faults.start_soon(crash_and_restart, f, a, rng, kms_faults)
                    faults.start_soon(kill_and_restart, f, c, rng, stop, kms_faults)
                    end = time.monotonic() + SOAK_SECONDS
                    while time.monotonic() < end:
                        await trio.sleep(rng.uniform(1.0, 3.0))
                        fault = rng.choice(["leader", "pause", "pause", "quorum"])
                        if fault == "leader":
                            await timeline.kill_leader(etcd, down=rng.uniform(0.3, 2.0))
                        elif fault == "pause":
                            await timeline.pause_member(
                                etcd, leader=rng.random() < 0.5, down=rng.uniform(0.3, 2.0)
                            )
                        else:
                            await timeline.lose_quorum(etcd, down=rng.uniform(1.5, 3.0))
                    stop.set()
                    faults.cancel_scope.cancel()
            blind = assert_nothing_signed_without_quorum(f, timeline)
    cut = proxy_faults(proxies)
    counts = assert_safe(f, "soak: 3 hosts, every fault at random", timeline.outages)
    ha_counted(
        "soak: 3 hosts, every fault at random",
        refused_without_quorum=blind,
        **{f"etcd_{k}": v for k, v in sorted(timeline.events.items())},
        **dict(sorted(kms_faults.items())),
        **cut,
    )
    assert kms_faults["kms_crashed"] >= 3 and kms_faults["kms_killed"] >= 3, kms_faults
    assert int(counts["steps"]) >= 1000


async def test_tmkms_start_never_creates_the_watermark_state_init_does(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """A new etcd, two hosts started before anyone ran `tmkms state init`: both refuse every
    step (cause missing), each says once what to do, and nothing is written to etcd. The
    operator runs `tmkms state init` on one host while both run: signing starts by itself."""
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints, init=False)
            b = await f.add("kms-b", etcd.endpoints[::-1], init=False)
            await f.start(a, None, "--metrics", "127.0.0.1:0")
            await f.start(b)
            began = time.monotonic()
            for result in await f.steps(4):
                assert not result.signed, result
                assert result.refused == {"kms-a": "missing", "kms-b": "missing"}, result
            assert a.kms is not None
            advice = rf"ERROR .*\[{f.chain_id}\] first contact with etcd refused: .*state init"
            await a.kms.wait_for(advice, timeout=5)
            await trio.sleep(2.5)  # two more rounds of the watcher: not repeated
            assert sum(bool(re.search(advice, line)) for line in a.output()) == 1
            assert await in_thread(etcd.get_value, f.key) is None
            base = await metrics_base(a.kms)
            doc = await wait_ready(base, False)  # etcd answers, but the chain cannot sign
            assert doc["etcd"]["reachable"] is True
            assert "tmkms state init" in doc["etcd"]["not_reconciled"][f.chain_id], doc
            out = await state_init(a)
            created = time.monotonic()
            assert "shared: created at 0/0/0 Proposal, block <nil> by kms-a" in out, out
            await wait_ready(base, True)
            first = await f.wait_signed(timeout=5)
            waited = time.monotonic() - created
            await f.steps(10)
    assert waited <= 3.0, waited
    assert first.signed
    assert_safe(f, "watermark created by state init while running", [(began, created)])
    ha_counted("watermark created by state init", signed_after_ms=round(waited * 1000))


async def test_a_new_host_starts_without_etcd_then_adopts_the_watermark(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Host A signs, then dies. Host B, empty state, starts while etcd has no quorum: it
    serves refusals and is not ready. The quorum comes back: B adopts A's watermark by
    itself, refuses a conflicting block at A's last step, and signs the next heights."""
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", etcd.endpoints[::-1])
            await f.start(a)
            signed_by_a = await f.steps(30)
            assert all(s.signed == ["kms-a"] for s in signed_by_a)
            await f.kill(a)
            shared = parse_watermark(await in_thread(etcd.get_value, f.key))
            assert shared.host == "kms-a" and shared.state.hrs == signed_by_a[-1].hrs

            lost = time.monotonic()
            await in_thread(etcd.lose_quorum)
            await f.start(b, None, "--metrics", "127.0.0.1:0")
            assert b.kms is not None
            base = await metrics_base(b.kms)
            doc = await wait_ready(base, False)
            assert doc["etcd"]["reachable"] is False
            for result in await f.steps(2):
                assert not result.signed and set(result.refused) == {"kms-b"}, result
            regaining = time.monotonic()
            await in_thread(etcd.regain_quorum)
            back = time.monotonic()
            await b.kms.wait_for(r"\] shared watermark adopted", timeout=10)
            await wait_ready(base, True)
            ready = time.monotonic() - regaining

            other = block(random.Random(1))
            again = await f.ask_at(b, signed_by_a[-1].hrs, other)
            assert again.refused == {"kms-b": "double_sign"}, again
            first = await f.wait_signed(timeout=5)
            assert first.signed == ["kms-b"]
            await f.steps(10)
    counts = assert_safe(f, "startup without etcd, then adopt", [(lost, back)])
    ha_counted("startup without etcd, then adopt", ready_after_quorum_ms=round(ready * 1000))
    assert counts["conflicting_pairs"] == 0


async def test_a_watermark_deleted_from_etcd_is_refused_not_recreated(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """The chain's key deleted while two hosts run (an `etcdctl del`, a restored backup):
    the host that lost the last step, asked again for its block there, refuses (it used to
    re-create the key and sign: a double sign; see tests/test_ha_safety.py), and so does
    every host at the next steps, until the watermark is put back."""
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", etcd.endpoints[::-1])
            await f.start(a)
            await f.start(b)
            last = (await f.steps(7))[-1]
            (winner,) = last.signed
            loser = b if winner == "kms-a" else a
            kept = await in_thread(etcd.get_value, f.key)
            leader = await in_thread(etcd.wait_leader)
            await in_thread(etcd.post, leader, "/v3/kv/deleterange", {"key": b64(f.key)})
            again = await f.ask_at(loser, last.hrs, f.block_of(loser, last.hrs[0]))
            assert again.refused == {loser.name: "missing"}, again
            for result in await f.steps(3):
                assert not result.signed and len(result.refused) == 2, result
                assert set(result.refused.values()) == {"missing"}, result
            assert loser.kms is not None
            await loser.kms.wait_for(
                rf"ERROR .*\[{f.chain_id}\] shared watermark missing: .*no watermark under"
            )
            assert await in_thread(etcd.get_value, f.key) is None
            await in_thread(etcd.put_value, f.key, kept)  # the operator restores it
            await f.wait_signed(timeout=5)
            await f.steps(20)
    assert_safe(f, "watermark deleted from etcd, then restored")


def back_up(etcd: EtcdCluster, folder: Path) -> None:
    """A cold backup of the cluster: every member stopped, its data dir copied, restarted."""
    for index in range(len(etcd.members)):
        etcd.kill(index)
    for member in etcd.members:
        shutil.copytree(member.data_dir, folder / member.name)
    for index in range(len(etcd.members)):
        etcd.restart(index)
    etcd.wait_leader(20.0)


def restore(etcd: EtcdCluster, folder: Path) -> None:
    """Put the cluster back as :func:`back_up` saved it (revisions go back with it)."""
    for index in range(len(etcd.members)):
        etcd.kill(index)
    for member in etcd.members:
        shutil.rmtree(member.data_dir)
        shutil.copytree(folder / member.name, member.data_dir)
    for index in range(len(etcd.members)):
        etcd.restart(index)
    etcd.wait_leader(20.0)


async def test_etcd_restored_from_an_older_backup_is_refused(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """etcd is restored from a backup taken a few heights ago while two hosts run: its
    watermark (and revision) went back below steps already signed. The host that lost the
    last step, asked again for its block there, refuses (it used to sign it: a double
    sign), and so does every host after, until an operator raises the watermark and
    restarts the KMSes."""
    with trio.fail_after(LIMIT):
        async with fleet(tmp_path) as f:
            a = await f.add("kms-a", etcd.endpoints)
            b = await f.add("kms-b", etcd.endpoints[::-1])
            await f.start(a)
            await f.start(b)
            await f.steps(6)
            await in_thread(back_up, etcd, tmp_path / "backup")
            await f.wait_signed(timeout=10)
            last = (await f.steps(9))[-1]
            (winner,) = last.signed
            loser = b if winner == "kms-a" else a
            newest = await in_thread(etcd.get_value, f.key)
            await in_thread(restore, etcd, tmp_path / "backup")
            restored = parse_watermark(await in_thread(etcd.get_value, f.key))
            assert restored.state.hrs < last.hrs  # it went back
            again = await f.ask_at(loser, last.hrs, f.block_of(loser, last.hrs[0]))
            assert again.refused == {loser.name: "malformed"}, again
            for result in await f.steps(3):
                assert not result.signed and len(result.refused) == 2, result
            assert loser.kms is not None
            await loser.kms.wait_for(
                rf"ERROR .*\[{f.chain_id}\] shared watermark malformed: .*went back in time"
            )
            # the operator's way back: the newest watermark in, the KMSes restarted
            await in_thread(etcd.put_value, f.key, newest)
            for host in (a, b):
                await f.kill(host)
                await f.start(host)
            await f.wait_signed(timeout=10)
            await f.steps(20)
    assert_safe(f, "etcd restored from an older backup")
