"""Shared tools of the fault suite (tests/test_fault_*.py).

* ``KmsHome``: keys, state folder and tmkms.toml for one chain, as an operator lays them out.
* ``SignedBook`` / ``Ledger``: every signature that left the KMS, verified over the oracle's
  sign bytes as it arrives, and the conflicts among them (two blocks for one
  height/round/step, or two different blocks among the votes of one height/round).
  ``log_book`` builds the same book from the KMS's own ``signed ...`` log lines, which also
  covers signatures whose reply was lost.
* ``start_kms``: the real ``tmkms start``, optionally through ``SHIM``: a tiny Python child
  that patches the lowest layer (``os.open``/``os.write``/``os.fsync``/``os.replace``, the
  state file's rename exchange, the signer and the socket send) to crash (``os._exit``) at
  a named point of the sign path, to emulate a power cut (un-fsync'd data and renames are lost), or to fail the state write
  with an errno while a control file says so. No product code knows about any of this.
* ``Walker``: a node that walks heights and asks for proposals and votes, recording
  everything in a ``Ledger``.
"""

from __future__ import annotations

import collections
import os
import random
import re
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import attrs
import trio
from nacl.signing import SigningKey, VerifyKey

from kms.chain.state import SignState
from kms.chain.store import StateFile
from kms.errors import ProtocolError
from kms.protocol.messages import (
    BlockId,
    PartSetHeader,
    SignedMsgType,
    SignedProposalResponse,
    SignedVoteResponse,
)
from kms.sim.consensus import make_proposal, make_vote
from kms.sim.node import SignerClient, SimulatedNode
from tests.support import oracle
from tests.support.kmsproc import (
    TMKMS,
    KmsProcess,
    chain_toml,
    tmkms_start,
    validator_toml,
    write_key,
)

NIL = BlockId()
CRASH_CODE = 86

#: What a node sees when the KMS (or the link) goes away mid-request.
LINK_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    ProtocolError,
    OSError,
)

#: What each scenario counted, printed in the terminal summary by tests/fault/conftest.py.
FAULT_COUNTS: dict[str, dict[str, int]] = {}


def fault_counted(scenario: str, **counts: int) -> None:
    """Add ``counts`` (requests, crashes, signatures, conflicts...) to a fault-suite scenario."""
    totals = FAULT_COUNTS.setdefault(scenario, {})
    for key, value in counts.items():
        totals[key] = totals.get(key, 0) + value


# ---------------------------------------------------------------- keys, config


def block(rng: random.Random) -> BlockId:
    """A random non-nil block ID (random 32-byte hashes, one part)."""
    return BlockId(
        hash=rng.randbytes(32), part_set_header=PartSetHeader(total=1, hash=rng.randbytes(32))
    )


@attrs.define
class KmsHome:
    """A KMS folder for one chain: consensus key, identity key, state folder, config."""

    root: Path
    chain_id: str
    consensus: SigningKey
    identity: SigningKey

    @classmethod
    def create(cls, root: Path, chain_id: str = "fault-1") -> KmsHome:
        """Write fresh keys under ``root/secrets`` and make ``root/state``."""
        home = cls(root, chain_id, SigningKey.generate(), SigningKey.generate())
        write_key(root / "secrets" / f"{chain_id}.key", home.consensus)
        write_key(root / "secrets" / "kms-identity.key", home.identity)
        home.state_dir.mkdir(parents=True, exist_ok=True)
        return home

    @property
    def state_dir(self) -> Path:
        """Where the chain's state file lives."""
        return self.root / "state"

    @property
    def state_file(self) -> Path:
        """The chain's tmkms state file."""
        return self.state_dir / f"{self.chain_id}.json"

    @property
    def verify_key(self) -> VerifyKey:
        """The consensus public key, to check signatures."""
        return self.consensus.verify_key

    def load_state(self) -> SignState:
        """The state on disk, read the way the KMS reads it."""
        return StateFile(self.state_file).load()

    def write_config(
        self,
        addrs: Sequence[str],
        version: str = "v0.38",
        validator_extra: Sequence[str] = (),
        chain_extra: Sequence[str] = (),
    ) -> Path:
        """tmkms.toml with one `[[validator]]` per address; returns its path."""
        text = chain_toml(self.chain_id, self.root, chain_extra)
        for addr in addrs:
            text += validator_toml(self.chain_id, addr, self.root, version, validator_extra)
        config = self.root / "tmkms.toml"
        config.write_text(text)
        return config


# ---------------------------------------------------------------- signatures and conflicts


def label(block_id: BlockId) -> str:
    """The KMS log's label of a block: 10 upper-case hex digits of the hash, or <nil>."""
    return block_id.hash[:5].hex().upper() if not block_id.is_nil() else "<nil>"


@attrs.define
class SignedBook:
    """Signatures by position; ``conflicts()`` lists every slashable pair among them."""

    slots: dict[tuple[int, int, int], set[str]] = attrs.field(factory=dict)
    vote_blocks: dict[tuple[int, int], set[str]] = attrs.field(factory=dict)
    count: int = 0

    def add(self, height: int, round_: int, step: int, block_label: str) -> None:
        """Record one signature at height/round/step over the block labelled ``block_label``."""
        self.count += 1
        self.slots.setdefault((height, round_, step), set()).add(block_label)
        if step != 0 and block_label != "<nil>":
            self.vote_blocks.setdefault((height, round_), set()).add(block_label)

    def conflicts(self) -> list[str]:
        """Two blocks at one h/r/s, or two non-nil blocks among the votes of one h/r."""
        found = [f"h/r/s {hrs}: {sorted(b)}" for hrs, b in self.slots.items() if len(b) > 1]
        found += [
            f"votes h/r {hr}: {sorted(b)}" for hr, b in self.vote_blocks.items() if len(b) > 1
        ]
        return found

    def highest(self) -> tuple[int, int, int]:
        """The highest position signed so far ((0, 0, 0) if none)."""
        return max(self.slots, default=(0, 0, 0))


_SIGNED_LINE = re.compile(
    r"signed (Proposal|Prevote|Precommit):(\S+) at h/r/s (\d+)/(\d+)/(\d+) \(\d+ ms\)"
)


def log_book(lines: Sequence[str], book: SignedBook | None = None) -> SignedBook:
    """Every `signed <Type>:<block> at h/r/s H/R/S` line of KMS output, as a SignedBook."""
    book = SignedBook() if book is None else book
    for line in lines:
        if match := _SIGNED_LINE.search(line):
            book.add(int(match[3]), int(match[4]), int(match[5]), match[2])
    return book


@attrs.define
class Ledger:
    """What one node got back: signatures (verified, booked) and refusals (by code)."""

    chain_id: str
    verify_key: VerifyKey
    book: SignedBook = attrs.field(factory=SignedBook)
    exact: SignedBook = attrs.field(factory=SignedBook)
    refused: collections.Counter[int] = attrs.field(factory=collections.Counter)

    @property
    def signatures(self) -> int:
        """Signatures received and verified."""
        return self.book.count

    def vote(self, reply: SignedVoteResponse) -> bool:
        """Book a vote reply; True if signed. A bad signature raises BadSignatureError."""
        if reply.error is not None:
            assert reply.vote is None or not reply.vote.signature, "error reply with a signature"
            self.refused[reply.error.code] += 1
            return False
        vote = reply.vote
        assert vote is not None and vote.signature, "reply without error and without a vote"
        self.verify_key.verify(oracle.vote_sign_bytes(self.chain_id, vote), vote.signature)
        step = 1 if vote.type == SignedMsgType.PREVOTE else 2
        self._add(vote.height, vote.round, step, vote.block_id)
        return True

    def proposal(self, reply: SignedProposalResponse) -> bool:
        """Book a proposal reply; True if signed."""
        if reply.error is not None:
            assert reply.proposal is None or not reply.proposal.signature
            self.refused[reply.error.code] += 1
            return False
        proposal = reply.proposal
        assert proposal is not None and proposal.signature
        self.verify_key.verify(
            oracle.proposal_sign_bytes(self.chain_id, proposal), proposal.signature
        )
        self._add(proposal.height, proposal.round, 0, proposal.block_id)
        return True

    def _add(self, height: int, round_: int, step: int, block_id: BlockId) -> None:
        self.book.add(height, round_, step, label(block_id))
        psh = block_id.part_set_header
        full = (
            f"{block_id.hash.hex()}/{psh.total}/{psh.hash.hex()}"
            if not block_id.is_nil()
            else "<nil>"
        )
        self.exact.add(height, round_, step, full)

    def conflicts(self) -> list[str]:
        """Conflicts among the signatures received (by full block ID)."""
        return self.exact.conflicts()


# ---------------------------------------------------------------- talking to the KMS


async def ask(
    client: SignerClient, ledger: Ledger, step: int, hrs_block: tuple[int, int, BlockId]
) -> bool:
    """Ask for one proposal (step 0) or vote (1, 2) at height/round over a block; True if signed."""
    height, round_, block_id = hrs_block
    if step == 0:
        return ledger.proposal(await client.sign_proposal(make_proposal(height, round_, block_id)))
    msg_type = SignedMsgType.PREVOTE if step == 1 else SignedMsgType.PRECOMMIT
    return ledger.vote(await client.sign_vote(make_vote(msg_type, height, round_, block_id)))


@attrs.define
class Walker:
    """A node's consensus loop: one block per height; proposal, prevote, precommit."""

    ledger: Ledger
    rng: random.Random
    height: int = 1
    requests: int = 0
    in_flight: tuple[int, int, int] | None = None

    async def walk(self, client: SignerClient, heights: int | None = None) -> None:
        """Walk ``heights`` heights (forever if None); returns on a link failure."""
        done = 0
        while heights is None or done < heights:
            block_id = block(self.rng)
            for step in (0, 1, 2):
                self.in_flight = (self.height, 0, step)
                self.requests += 1
                try:
                    await ask(client, self.ledger, step, (self.height, 0, block_id))
                except LINK_ERRORS:
                    return
                self.in_flight = None
            self.height += 1
            done += 1


async def accept(node: SimulatedNode, timeout: float = 10.0) -> SignerClient:
    """The KMS's next connection to ``node`` (handshake included)."""
    with trio.fail_after(timeout):
        return await node.accept()


# ---------------------------------------------------------------- the KMS process and its shim

SHIM = r"""
import errno, os, sys

STATE_DIR = os.path.realpath(os.environ["FAULTKIT_STATE_DIR"])
CRASH_AT = os.environ.get("FAULTKIT_CRASH_AT", "")
CRASH_HIT = int(os.environ.get("FAULTKIT_CRASH_HIT", "1"))
POWER_CUT = os.environ.get("FAULTKIT_POWER_CUT") == "1"
FAULT_FILE = os.environ.get("FAULTKIT_FAULT_FILE", "")
CRASH_CODE = int(os.environ.get("FAULTKIT_CRASH_CODE", "86"))
SKIP_FSYNC = os.environ.get("FAULTKIT_SKIP_FSYNC") == "1"  # a store as tmkms writes it

real_open, real_write, real_fsync = os.open, os.write, os.fsync
real_replace, real_close, real_exit = os.replace, os.close, os._exit
temps, dirs = {}, set()    # fd -> temp file in STATE_DIR; fds of STATE_DIR itself
unsynced = set()           # temp files written since their last fsync
pending = []               # (state file, bytes before the rename): folder not fsync'd yet
hits = {}

def in_state_dir(path):
    return os.path.dirname(os.path.realpath(path)) == STATE_DIR

def power_cut():
    # What a power cut may take away: file data never fsync'd, renames never made durable.
    # A worker thread may be saving meanwhile (a threaded or prepared save): snapshots.
    for path in list(unsynced):
        if os.path.exists(path):
            fd = real_open(path, os.O_WRONLY | os.O_TRUNC)
            real_close(fd)
    for target, before in reversed(list(pending)):
        if before is None:
            os.unlink(target)
        else:
            fd = real_open(target, os.O_WRONLY | os.O_TRUNC)
            real_write(fd, before)
            real_close(fd)

def point(name):
    if name != CRASH_AT:
        return
    hits[name] = hits.get(name, 0) + 1
    if hits[name] == CRASH_HIT:
        if POWER_CUT:
            power_cut()
        real_exit(CRASH_CODE)

def injected(op):
    if not FAULT_FILE:
        return
    try:
        with open(FAULT_FILE) as control:
            words = control.read().split()
    except FileNotFoundError:
        return
    if words and (len(words) == 1 or op in words[1:]):
        code = getattr(errno, words[0])
        raise OSError(code, os.strerror(code))

def fault_open(path, flags, mode=0o777, *, dir_fd=None):
    state = dir_fd is None and isinstance(path, (str, bytes, os.PathLike))
    is_dir = state and os.path.realpath(path) == STATE_DIR
    state = state and not is_dir and in_state_dir(path) and os.fspath(path).endswith(".tmp")
    if state:
        point("before_create")
        injected("open")
    fd = real_open(path, flags, mode, dir_fd=dir_fd)
    if state:
        temps[fd] = os.fspath(path)
    elif is_dir:
        dirs.add(fd)
    return fd

def fault_write(fd, data):
    if fd not in temps:
        return real_write(fd, data)
    point("before_write")
    injected("write")
    unsynced.add(temps[fd])
    if CRASH_AT == "mid_write" and hits.get("mid_write", 0) + 1 == CRASH_HIT and len(data) > 1:
        real_write(fd, bytes(data[: len(data) // 2]))
    point("mid_write")
    return real_write(fd, data)

def fault_fsync(fd):
    if SKIP_FSYNC and (fd in temps or fd in dirs):
        return
    if fd in temps:
        point("before_fsync")
        injected("fsync")
        real_fsync(fd)
        unsynced.discard(temps[fd])
    elif fd in dirs:
        point("before_dir_fsync")
        injected("dirfsync")
        real_fsync(fd)
        pending.clear()
        point("after_save")
    else:
        real_fsync(fd)

def fault_replace(src, dst, **kwargs):
    if not in_state_dir(dst):
        return real_replace(src, dst, **kwargs)
    point("before_replace")
    injected("replace")
    try:
        with open(dst, "rb") as before:
            old = before.read()
    except FileNotFoundError:
        old = None
    real_replace(src, dst, **kwargs)
    pending.append((os.fspath(dst), old))

def fault_close(fd):
    temps.pop(fd, None)
    dirs.discard(fd)
    return real_close(fd)

os.open, os.write, os.fsync, os.replace, os.close = (
    fault_open, fault_write, fault_fsync, fault_replace, fault_close
)

import trio
import kms.chain.store
import kms.protocol.connection
import providers.softsign

real_exchange = kms.chain.store.rename_exchange

def fault_exchange(src, dst):
    # the spare swapped with the state file: the same crash point and fault as a rename
    if not in_state_dir(dst) or not os.path.exists(dst):
        return real_exchange(src, dst)  # declines; the rename over that follows is os.replace
    point("before_replace")
    injected("replace")
    with open(dst, "rb") as before:
        old = before.read()
    swapped = real_exchange(src, dst)
    if swapped:
        pending.append((os.fspath(dst), old))
    return swapped

kms.chain.store.rename_exchange = fault_exchange

real_sign = providers.softsign.Ed25519SoftSigner.sign
real_frame = kms.protocol.connection.frame
real_send_all = trio.SocketStream.send_all
replying = [False]

async def crashing_sign(self, message):
    signature = await real_sign(self, message)
    point("after_sign")
    return signature

def crashing_frame(payload):
    point("before_reply")
    replying[0] = True
    return real_frame(payload)

async def crashing_send_all(self, data):
    await real_send_all(self, data)
    if replying[0]:
        replying[0] = False
        point("after_reply")

providers.softsign.Ed25519SoftSigner.sign = crashing_sign
kms.protocol.connection.frame = crashing_frame
trio.SocketStream.send_all = crashing_send_all

from kms.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: The crash points of the sign path, in the order one signature passes them.
CRASH_POINTS = (
    "before_create",
    "before_write",
    "mid_write",
    "before_fsync",
    "before_replace",
    "before_dir_fsync",
    "after_save",
    "after_sign",
    "before_reply",
    "after_reply",
)


def start_kms(
    config: Path,
    *extra: str,
    shim: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> AbstractAsyncContextManager[KmsProcess]:
    """`tmkms start -c CONFIG`, through ``SHIM`` when ``shim`` (FAULTKIT_* settings) is given.

    On exit the process is stopped (SIGTERM, then SIGKILL) if it still runs.
    """
    launcher = TMKMS if shim is None else [sys.executable, "-c", SHIM]
    return tmkms_start(config, *extra, env={**(env or {}), **(shim or {})}, launcher=launcher)


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` has open right now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def stale_temp_files(directory: Path) -> list[str]:
    """Temp files a crashed save left behind in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))
