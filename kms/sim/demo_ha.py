"""`tmkms demo --ha`: two KMS hosts, one consensus key, one shared watermark on real etcd.

What it shows, in about half a minute, on loopback and temporary folders only:

1. a 3-member etcd cluster (the installed ``etcd``, :mod:`kms.sim.etcd`), and the chain's
   shared watermark created in it by `tmkms state init`, as an operator does once;
2. two real `tmkms start` processes, ``kms-a`` and ``kms-b``, sharing one consensus key,
   each with its own home, state file, Secret Connection identity and ``[etcd] host``,
   each dialled by its own simulated node (their log lines are relayed, prefixed with the
   host's name);
3. at every step of a few heights, both nodes ask their KMS at the same instant to sign
   *different* blocks (each node its own block for the height): one host signs, the other
   is refused (RemoteSignerError), and every signature is checked against the key;
4. then the etcd leader and the host that signed last are SIGKILLed: the surviving host
   still refuses to sign against what the dead one signed, and keeps signing new heights
   as soon as etcd has a new leader.

Everything it started is stopped at the end (the etcd members are in their own process
groups, so a Ctrl-C in the terminal reaches only the demo, which then stops them).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from kms.errors import KmsError, ProtocolError
from kms.protocol.messages import BlockId, RemoteSignerError, SignedMsgType
from kms.protocol.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from kms.protocol.version import ProtocolVersion
from kms.sim.consensus import make_proposal, make_vote, random_block_id
from kms.sim.demo import write_demo_home
from kms.sim.etcd import LocalEtcd, find_etcd
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address

__all__ = ["NO_ETCD", "main"]

CHAIN_ID = "demo-ha-1"
HOSTS = ("kms-a", "kms-b")
PREFIX = "/tmkms-demo/"
CONTESTED_HEIGHTS = 3
HEIGHTS_AFTER_KILLS = 3
STEP_NAMES = ("Proposal", "Prevote", "Precommit")
RETRY_AFTER = 0.1  # seconds before a node asks again after an etcd-side refusal
AFTER_KILLS_LIMIT = 20.0  # seconds the survivor may take to sign again
CONNECT_LIMIT = 30.0
NO_ETCD = (
    "tmkms demo --ha needs etcd: no `etcd` binary on PATH (Debian/Ubuntu: "
    "apt-get install etcd-server; or set ETCD_BINARY to its path)"
)


def say(text: str) -> None:
    """The demo's side of the story, between the relayed KMS log lines."""
    print(f"--- demo: {text}", flush=True)


def write_ha_home(
    home: Path, host: str, node_addr: Address, consensus_key: SigningKey, endpoints: list[str]
) -> Path:
    """A KMS home for ``host``: its own identity and state, the shared key, ``[etcd]``."""
    urls = ", ".join(f'"{url}"' for url in endpoints)
    etcd = f'\n[etcd]\nendpoints = [{urls}]\nprefix = "{PREFIX}"\nhost = "{host}"\ntimeout = 1.0\n'
    return write_demo_home(
        home, node_addr, chain_id=CHAIN_ID, consensus_key=consensus_key, extra=etcd
    )


@attrs.define(eq=False)
class Host:
    """One KMS host of the demo, and the simulated node that drives it."""

    name: str
    home: Path
    node: SimulatedNode
    process: trio.Process | None = None
    client: SignerClient | None = None
    last_signed: tuple[int, int, BlockId] | None = None  # height, step, block


@attrs.frozen
class Answer:
    """A host's answer to one request: signed (and verified), or refused."""

    host: Host
    block: BlockId
    error: RemoteSignerError | None = None

    @property
    def signed(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        if self.error is None:
            return f"{self.host.name} signed block {short(self.block)}"
        return (
            f"{self.host.name} refused block {short(self.block)} (RemoteSignerError "
            f"{self.error.code}: {self.error.description})"
        )


def short(block: BlockId) -> str:
    return block.hash[:5].hex().upper() if block.hash else "<nil>"


async def ask(host: Host, key: VerifyKey, height: int, step: int, block: BlockId) -> Answer:
    """Ask ``host`` to sign ``step`` of ``height`` for ``block``; verify what comes back."""
    client = host.client
    assert client is not None
    if step == 0:
        reply = await client.sign_proposal(make_proposal(height, 0, block))
        if reply.error is not None or reply.proposal is None:
            return Answer(host, block, reply.error or RemoteSignerError(0, "empty reply"))
        _verify(key, proposal_sign_bytes(CHAIN_ID, reply.proposal), reply.proposal.signature)
    else:
        kind = SignedMsgType.PREVOTE if step == 1 else SignedMsgType.PRECOMMIT
        extension = b"ext" if step == 2 else b""
        vote_reply = await client.sign_vote(make_vote(kind, height, 0, block, extension))
        if vote_reply.error is not None or vote_reply.vote is None:
            return Answer(host, block, vote_reply.error or RemoteSignerError(0, "empty reply"))
        vote = vote_reply.vote
        _verify(key, vote_sign_bytes(CHAIN_ID, vote), vote.signature)
        if vote.extension_signature:
            _verify(key, vote_extension_sign_bytes(CHAIN_ID, vote), vote.extension_signature)
    host.last_signed = (height, step, block)
    return Answer(host, block)


def _verify(key: VerifyKey, message: bytes, signature: bytes) -> None:
    try:
        key.verify(message, signature)
    except BadSignatureError as exc:
        raise ProtocolError("a signature from the KMS does not verify") from exc


async def _relay(host: Host) -> None:
    """Print ``host``'s log lines, prefixed with its name, until its process exits."""
    assert host.process is not None and host.process.stdout is not None
    pending = b""
    async for chunk in host.process.stdout:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            print(f"{host.name} | {line.decode(errors='replace')}", flush=True)
    if pending:
        print(f"{host.name} | {pending.decode(errors='replace')}", flush=True)


async def _stop(host: Host) -> None:
    """SIGTERM, a few seconds, then SIGKILL (shielded: runs while the demo unwinds)."""
    process = host.process
    if process is None:
        return
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@attrs.define
class Tally:
    steps: int = 0
    one_signed: int = 0
    none_signed: int = 0
    both_signed: int = 0


async def _contest(hosts: list[Host], key: VerifyKey, rng: random.Random) -> Tally:
    """Every step of a few heights: both hosts asked at once for different blocks.

    Each node has its own block for the height (as two nodes that saw different proposals
    would), and asks its KMS to propose, prevote and precommit it.
    """
    tally = Tally()
    for height in range(1, CONTESTED_HEIGHTS + 1):
        blocks = [random_block_id(rng) for _ in hosts]  # each node's block for this height
        for step in range(3):
            answers: list[Answer] = []

            async with trio.open_nursery() as nursery:
                for host, block in zip(hosts, blocks, strict=True):
                    nursery.start_soon(_collect, answers, host, key, (height, step, block))
            answers.sort(key=lambda a: not a.signed)  # the signer first
            signed = sum(a.signed for a in answers)
            tally.steps += 1
            if signed == 1:
                tally.one_signed += 1
            elif signed == 0:
                tally.none_signed += 1
            else:
                tally.both_signed += 1
            say(
                f"height {height} {STEP_NAMES[step]}, both asked at once: "
                + "; ".join(a.describe() for a in answers)
            )
            if signed > 1:
                say("BOTH HOSTS SIGNED CONFLICTING BLOCKS: this must never happen")
    return tally


async def _collect(
    answers: list[Answer], host: Host, key: VerifyKey, request: tuple[int, int, BlockId]
) -> None:
    answers.append(await ask(host, key, *request))


async def _until_answered(
    host: Host, key: VerifyKey, height: int, step: int, block: BlockId, *, deadline: float
) -> Answer:
    """Ask until a signature or a double-sign refusal (code 2), as a node retrying would.

    Refusals for want of an answer from etcd (code 1: no leader yet, unreachable,
    ambiguous) are shown and asked again, until ``deadline``.
    """
    while True:
        answer = await ask(host, key, height, step, block)
        if answer.signed or (answer.error is not None and answer.error.code == 2):
            return answer
        say(f"  {answer.describe()}; asking again")
        if trio.current_time() > deadline:
            return answer
        await trio.sleep(RETRY_AFTER)


async def _after_kills(
    survivor: Host, dead: Host, key: VerifyKey, rng: random.Random, killed_at: float
) -> int:
    """The survivor: bound by the dead host's last signature, then signing on. Failures."""
    failures = 0
    deadline = trio.current_time() + AFTER_KILLS_LIMIT
    assert dead.last_signed is not None
    height, step, _ = dead.last_signed
    say(
        f"asking {survivor.name} for height {height} {STEP_NAMES[step]} (what {dead.name} "
        "signed last) for another block"
    )
    answer = await _until_answered(
        survivor, key, height, step, random_block_id(rng), deadline=deadline
    )
    say(f"  {answer.describe()}")
    if answer.signed:
        say("the survivor signed against the dead host's signature: this must never happen")
        failures += 1
    first: float | None = None
    signed = 0
    for next_height in range(height + 1, height + 1 + HEIGHTS_AFTER_KILLS):
        block = random_block_id(rng)
        for next_step in range(3):
            answer = await _until_answered(
                survivor, key, next_height, next_step, block, deadline=deadline
            )
            since = (time.perf_counter() - killed_at) * 1e3
            if not answer.signed:
                say(f"  {answer.describe()}: not signed")
                failures += 1
                continue
            signed += 1
            first = since if first is None else first
            say(
                f"height {next_height} {STEP_NAMES[next_step]}: {survivor.name} signed block "
                f"{short(block)}, {since:.0f} ms after the kills"
            )
    if first is not None:
        say(
            f"signing continues after the kills: {survivor.name} signed {signed} of "
            f"{3 * HEIGHTS_AFTER_KILLS}, the first {first:.0f} ms after the kills"
        )
    return failures


async def _demo_ha(root: Path, binary: str) -> int:
    say(f"working in {root} (removed at the end)")
    cluster = LocalEtcd(binary, root / "etcd")
    try:
        say(f"starting a 3-member etcd cluster on 127.0.0.1 ({binary})")
        leader = await trio.to_thread.run_sync(cluster.start)
        say(f"etcd members {', '.join(cluster.endpoints)}; leader {cluster.members[leader].name}")
        return await _with_cluster(root, cluster)
    finally:
        cluster.close()
        say("etcd members stopped")


async def _with_cluster(root: Path, cluster: LocalEtcd) -> int:
    consensus = SigningKey.generate()
    hosts: list[Host] = []
    try:
        for name in HOSTS:
            node = SimulatedNode(CHAIN_ID, ProtocolVersion.V0_38)
            await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
            hosts.append(Host(name, root / name, node))
        async with trio.open_nursery() as relays:
            try:
                for host in hosts:
                    assert host.node.address is not None
                    config = write_ha_home(
                        host.home, host.name, host.node.address, consensus, cluster.endpoints
                    )
                    if host is hosts[0]:
                        await _state_init(config)
                    say(f"starting `tmkms start -c {config}` as {host.name}")
                    host.process = await trio.lowlevel.open_process(
                        [sys.executable, "-m", "kms", "start", "-c", str(config)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                    relays.start_soon(_relay, host)
                return await _scenario(hosts, cluster, consensus.verify_key)
            finally:
                for host in hosts:
                    await _stop(host)
                say("KMS processes stopped")
    finally:
        with trio.CancelScope(shield=True):
            for host in hosts:
                await host.node.aclose()


async def _state_init(config: Path) -> None:
    """`tmkms state init`: the operator's one step on a new etcd (start never creates keys)."""
    say(f"creating the shared watermark: `tmkms state init -c {config}`")
    done = await trio.run_process(
        [sys.executable, "-m", "kms", "state", "init", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )
    for line in done.stdout.decode(errors="replace").splitlines():
        say(f"  {line}")
    if done.returncode != 0:
        raise KmsError(f"tmkms state init exited with {done.returncode}")


async def _scenario(hosts: list[Host], cluster: LocalEtcd, key: VerifyKey) -> int:
    with trio.fail_after(CONNECT_LIMIT):
        for host in hosts:
            host.client = await host.node.accept()
            pub = await host.client.pub_key()
            if pub.data != bytes(key):
                raise KmsError(f"{host.name} serves another key: {pub.data.hex()}")
    say(f"both KMS hosts connected, one consensus key {bytes(key).hex()}")
    rng = random.Random(7)
    tally = await _contest(hosts, key, rng)
    say(
        f"{tally.steps} steps asked of both hosts at once for different blocks: "
        f"{tally.one_signed} signed by exactly one host, {tally.none_signed} by none, "
        f"{tally.both_signed} by both"
    )
    signers = [h for h in hosts if h.last_signed is not None]
    if not signers:
        say("nothing was signed")
        return 1
    dead = max(signers, key=lambda h: h.last_signed[:2] if h.last_signed else (0, 0))
    survivor = next(h for h in hosts if h is not dead)
    leader = await trio.to_thread.run_sync(cluster.wait_leader)
    member = cluster.members[leader]
    assert dead.process is not None
    say(
        f"SIGKILL to the etcd leader {member.name} (pid {member.pid}) and to {dead.name} "
        f"(pid {dead.process.pid}), the host that signed last"
    )
    killed_at = time.perf_counter()
    cluster.kill(leader)
    dead.process.kill()
    failures = await _after_kills(survivor, dead, key, rng, killed_at)
    ok = tally.both_signed == 0 and tally.one_signed > 0 and failures == 0
    say("done: no conflicting signature" if ok else "done: FAILED (see above)")
    return 0 if ok else 1


def main() -> int:
    """Run the HA demo on a temporary folder removed afterwards; KmsError without etcd."""
    binary = find_etcd()
    if binary is None:
        explicit = os.environ.get("ETCD_BINARY")
        if explicit:
            raise KmsError(f"tmkms demo --ha needs etcd: ETCD_BINARY={explicit} is not executable")
        raise KmsError(NO_ETCD)
    with tempfile.TemporaryDirectory(prefix="tmkms-demo-ha-") as tmp:
        os.chmod(tmp, 0o700)
        return trio.run(_demo_ha, Path(tmp), binary)
