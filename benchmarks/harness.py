"""Shared pieces of the end-to-end benchmarks: a KMS home, the process, the node, stats."""

from __future__ import annotations

import base64
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio
from nacl.signing import SigningKey

from kms.chain.state import SignState
from kms.chain.store import StateFile
from kms.protocol.codec import decode_response, encode_request
from kms.protocol.messages import (
    Request,
    SignedMsgType,
    SignedProposalResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignVoteRequest,
)
from kms.sim.consensus import make_proposal, make_vote, random_block_id
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of durations in seconds, as milliseconds."""
    return {
        "p50_ms": statistics.median(samples) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "max_ms": max(samples) * 1e3,
    }


@attrs.define
class KmsHome:
    """A temporary KMS home with one softsign key and one tcp validator per chain."""

    root: Path
    chains: list[str]
    nodes: dict[str, SimulatedNode] = attrs.field(factory=dict)
    extra: str = ""  # more tmkms.toml sections ([etcd], [metrics]), appended as they are

    @property
    def config(self) -> Path:
        return self.root / "tmkms.toml"

    def write(self) -> None:
        """Keys and tmkms.toml; the nodes must already be listening."""
        secrets = self.root / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        identity = secrets / "kms-identity.key"
        _write_key(identity)
        sections = []
        for chain in self.chains:
            key = secrets / f"{chain}.key"
            _write_key(key)
            addr = self.nodes[chain].address
            sections.append(
                f"""[[chain]]
id = "{chain}"
key_format = {{ type = "hex" }}
state_file = "{self.root}/state/{chain}.json"

[[providers.softsign]]
chain_ids = ["{chain}"]
key_type = "consensus"
path = "{key}"

[[validator]]
chain_id = "{chain}"
addr = "{addr}"
secret_key = "{identity}"
protocol_version = "v0.38"
"""
            )
        self.config.write_text("\n".join([*sections, self.extra]))


def _write_key(path: Path) -> None:
    path.write_text(base64.b64encode(bytes(SigningKey.generate())).decode() + "\n")
    path.chmod(0o600)


@asynccontextmanager
async def kms_with_nodes(
    chains: Sequence[str], extra_toml: str = ""
) -> AsyncIterator[tuple[KmsHome, trio.Process]]:
    """Nodes listening on loopback, then a real `tmkms start` dialling all of them.

    ``extra_toml`` is appended to its tmkms.toml (an ``[etcd]`` section, say).
    """
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        home = KmsHome(Path(tmp), list(chains), extra=extra_toml)
        for chain in chains:
            node = SimulatedNode(chain_id=chain)
            await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
            home.nodes[chain] = node
        home.write()
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "kms", "start", "-c", str(home.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield home, process
        finally:
            with trio.CancelScope(shield=True):
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                for node in home.nodes.values():
                    await node.aclose()


#: Seconds the KMS may take to dial every node and answer its first request.
CONNECT_TIMEOUT = 30.0


async def connect_all(home: KmsHome) -> list[SignerClient]:
    """Every node's connection from the KMS, in chain order, each past its first request
    (the public key): the KMS is dialled in and answering on all of them."""
    clients: dict[str, SignerClient] = {}

    async def connect(chain: str) -> None:
        client = await home.nodes[chain].accept()
        await client.pub_key()
        clients[chain] = client

    with trio.fail_after(CONNECT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for chain in home.chains:
                nursery.start_soon(connect, chain)
    return [clients[chain] for chain in home.chains]


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@attrs.define
class Signing:
    """Walks heights on one connection, timing every request (proposal, prevote, precommit)."""

    client: SignerClient
    height: int = 1
    latencies: list[float] = attrs.field(factory=list)
    errors: int = 0
    due: float = 0.0

    async def one_height(self, interval: float = 0.0) -> None:
        """Propose, prevote and precommit one height, timing each round trip.

        What is timed is the KMS's answer as the node's socket sees it: from the sealed
        request being handed to the socket to the reply's last bytes coming out of it
        (:class:`kms.sim.node.WireClock`). This Python node's own work (building,
        framing, encrypting and decrypting messages; a Go node spends microseconds on it)
        stays outside the window, as it does for the floor's round trip.

        With ``interval`` > 0 the requests are paced: each is due ``interval`` seconds after
        the previous one was due; a request sent late because the previous reply came late
        has its latency counted from when it was due, so a KMS that falls behind is charged
        for the queueing it causes.
        """
        block = random_block_id(_RNG)
        client, height, version = self.client, self.height, self.client.version
        chain = client.chain_id
        requests: list[Request] = [
            SignProposalRequest(make_proposal(height, 0, block), chain),
            SignVoteRequest(make_vote(SignedMsgType.PREVOTE, height, 0, block), chain),
            SignVoteRequest(make_vote(SignedMsgType.PRECOMMIT, height, 0, block, b"x"), chain),
        ]
        wire = client.wire
        assert wire is not None, "the node's socket has no clock"
        for request in requests:
            payload = encode_request(request, version)
            late_since = None
            if interval:
                self.due = self.due + interval if self.due else time.perf_counter()
                if self.due > (now := time.perf_counter()):
                    # on time: the clock starts when the request goes out (a trio sleep can
                    # overshoot by a millisecond; that is this node's lateness, not the KMS's)
                    await trio.sleep(self.due - now)
                else:  # behind: the KMS's queueing delay counts
                    late_since = self.due
            reply = await client.exchange(payload)
            started = wire.sent if late_since is None else late_since
            self.latencies.append(wire.arrived - started)
            decoded = decode_response(reply, version)
            if (
                not isinstance(decoded, SignedVoteResponse | SignedProposalResponse)
                or decoded.error
            ):
                self.errors += 1
        self.height += 1


_RNG = random.Random(1)


async def loopback_round_trip_s(rounds: int = 2000) -> float:
    """Median trio round trip of a small message over loopback TCP to another process.

    The far end is :mod:`benchmarks.echo` in a process of its own, as the node is to the
    KMS: a round trip inside one process skips waking the peer (29 us here instead of 84).
    """
    echo = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks.echo"], stdout=subprocess.PIPE
    )
    try:
        assert echo.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await echo.stdout.receive_some(64)
            if not chunk:
                raise RuntimeError("the echo server exited before printing its port")
            line += chunk
        client = await trio.open_tcp_stream("127.0.0.1", int(line))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = bytes(200)
        samples: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            await client.send_all(message)
            received = 0
            while received < len(message):
                received += len(await client.receive_some(65536))
            samples.append(time.perf_counter() - started)
        await client.aclose()
    finally:
        echo.kill()
        await echo.wait()
    return statistics.median(samples)


def durable_write_samples(rounds: int = 1000) -> list[float]:
    """Times of the floor's state write: temp file, write, fsync, rename, folder fsync."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="kms-floor-", dir=None) as tmp:
        target = os.path.join(tmp, "state.json")
        payload = b'{"height":"1","round":"0","step":2,"block_id":null}'
        dir_fd = os.open(tmp, os.O_RDONLY)
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                fd = os.open(target + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, payload)
                os.fsync(fd)
                os.close(fd)
                os.replace(target + ".tmp", target)
                os.fsync(dir_fd)
                samples.append(time.perf_counter() - started)
        finally:
            os.close(dir_fd)
    return samples


def state_save_samples(rounds: int = 1000) -> list[float]:
    """Times of the KMS's own durable save (:meth:`StateFile.save`, the spare exchange)."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="kms-floor-", dir=None) as tmp:
        store = StateFile(Path(tmp) / "state.json")
        for height in range(1, rounds + 1):
            state = SignState(height, 0, 2)
            started = time.perf_counter()
            store.save(state)
            samples.append(time.perf_counter() - started)
    return samples


def ed25519_sign_s(rounds: int = 5000) -> float:
    """Median time of one Ed25519 signature of a vote-sized message."""
    key = SigningKey.generate()
    message = bytes(120)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        key.sign(message)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
