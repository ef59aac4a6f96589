"""Disk faults: the state write fails (ENOSPC, EIO, read-only) or the state file is damaged.

A failed write must mean no signature, a RemoteSignerError, the process still serving, and
signatures again once the disk is back. Two ways to fail the write: a tiny tmpfs that
really fills up and really goes read-only (needs mount; skipped with the reason where it
is not permitted), and faultkit's shim, which makes os.open/write/fsync/replace of the
state folder fail with a chosen errno inside the real `tmkms start` (runs everywhere). A
state file that does not parse stops `tmkms start` with exit code 4 and a line naming it.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
import trio

from kms.chain.state import BlockRef, SignState
from kms.chain.stateformat import format_state
from kms.chain.store import StateFile
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from tests.fault.kit import KmsHome, Ledger, accept, ask, block, fault_counted, log_book, start_kms
from tests.support.kmsproc import KmsProcess, run_tmkms

ERR_SIGNER = 3  # the handler's RemoteSignerError code when signing failed (state not saved)
ERR_DOUBLE_SIGN = 2


@attrs.define
class Fault:
    """One way of breaking the state write, and of mending it."""

    name: str
    strerror: str
    on: Callable[[], None]
    off: Callable[[], None]
    written_anyway: bool = False  # the rename happened before the failure (folder fsync)


@attrs.define
class DiskRun:
    """A node connected to the KMS, walking up heights between faults."""

    home: KmsHome
    kms: KmsProcess
    client: SignerClient
    ledger: Ledger
    rng: random.Random
    height: int = 0
    requests: int = 0
    logged: dict[str, int] = attrs.field(factory=dict)

    async def sign_ok(self) -> None:
        self.height += 1
        self.requests += 1
        assert await ask(self.client, self.ledger, 2, (self.height, 0, block(self.rng)))

    async def survive(self, fault: Fault, *, first_sign: bool = True) -> None:
        """Fault on: no signature, code 3, old state, conflicts refused. Off: signatures."""
        if first_sign:
            await self.sign_ok()
        last = self.home.load_state()
        self.height += 1
        wanted = block(self.rng)
        refused_before = self.ledger.refused[ERR_SIGNER]
        fault.on()
        try:
            self.requests += 1
            assert not await ask(self.client, self.ledger, 1, (self.height, 0, wanted)), fault.name
            assert self.ledger.refused[ERR_SIGNER] == refused_before + 1, self.ledger.refused
            on_disk = self.home.load_state()
            assert on_disk == last or (fault.written_anyway and on_disk.hrs == (self.height, 0, 1))
            if last.height > 0:
                # the double-sign check needs no write: conflicts are still refused as such
                self.requests += 1
                conflicting = (last.height, last.round, block(self.rng))
                assert not await ask(self.client, self.ledger, last.step, conflicting)
                assert self.ledger.refused[ERR_DOUBLE_SIGN] >= 1
            self.logged[fault.strerror] = self.logged.get(fault.strerror, 0) + 1
            await self.kms.wait_for(
                r"ERROR .*signing failed: error (writing state to|syncing the folder of state "
                rf"file) {self.home.state_file}: .*{fault.strerror}",
                count=self.logged[fault.strerror],
            )
        finally:
            fault.off()
        assert self.kms.process.returncode is None, "the KMS died of a disk fault"
        self.requests += 1
        assert await ask(self.client, self.ledger, 1, (self.height, 0, wanted)), "no recovery"
        assert self.home.load_state().hrs == (self.height, 0, 1)


async def run_faults(
    home: KmsHome, faults: list[Fault], scenario: str, *, first_sign: bool = True, **start: object
) -> None:
    """Start the KMS, connect a node, and survive each fault in turn.

    ``first_sign=False`` when the disk is already broken at start: no good signature first.
    """
    laddr = Address(scheme="unix", path=str(home.root / "pv.sock"))
    config = home.write_config([str(laddr)])
    ledger = Ledger(home.chain_id, home.verify_key)
    with trio.fail_after(60):
        async with (
            simulated_node(home.chain_id, laddr) as node,
            start_kms(config, **start) as kms,  # type: ignore[arg-type]
        ):
            client = await accept(node)
            run = DiskRun(home, kms, client, ledger, random.Random(scenario))
            for fault in faults:
                await run.survive(fault, first_sign=first_sign)
            await run.sign_ok()
            lines = kms.lines
    conflicts = ledger.conflicts() + log_book(lines).conflicts()
    fault_counted(
        scenario,
        faults=len(faults),
        requests=run.requests,
        signatures=ledger.signatures,
        refused=sum(ledger.refused.values()),
        conflicts=len(conflicts),
    )
    assert not conflicts
    assert ledger.refused[ERR_SIGNER] == len(faults)


# ---------------------------------------------------------------- shim: runs everywhere

SHIM_OPS = ["open", "write", "fsync", "replace", "dirfsync"]
ERRNOS = ["ENOSPC", "EIO", "EROFS"]


def shim_faults(control: Path, names: list[str], ops: list[str]) -> list[Fault]:
    def toggle(text: str | None) -> Callable[[], None]:
        def apply() -> None:
            if text is None:
                control.unlink(missing_ok=True)
            else:
                control.write_text(text)

        return apply

    return [
        Fault(
            name=f"{name} on {op}",
            strerror=os.strerror(getattr(errno, name)),
            on=toggle(f"{name} {op}"),
            off=toggle(None),
            written_anyway=op == "dirfsync",
        )
        for name in names
        for op in ops
    ]


async def test_state_write_faults_through_the_shim(tmp_path: Path) -> None:
    """Every errno at every layer of the write, in one running process."""
    home = KmsHome.create(tmp_path)
    control = tmp_path / "disk-fault"
    shim = {"FAULTKIT_STATE_DIR": str(home.state_dir), "FAULTKIT_FAULT_FILE": str(control)}
    await run_faults(home, shim_faults(control, ERRNOS, SHIM_OPS), "disk faults (shim)", shim=shim)


# ---------------------------------------------------------------- a real, tiny filesystem


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=20)


@contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``where``; skips the test when mounting is not permitted."""
    where.mkdir()
    try:
        result = _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot run mount here: {exc}")
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {result.stderr.strip()}")
    try:
        yield where
    finally:
        while subprocess.run(["umount", "-l", str(where)], check=False, timeout=20).returncode == 0:
            pass  # and any read-only layer left on top of it


def fill(filler: Path) -> None:
    """Write ``filler`` until its filesystem is full (ENOSPC for real)."""
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def read_only_over(folder: Path) -> None:
    """Cover ``folder`` with a read-only copy of its state files (a real EROFS for writers).

    A plain ``remount,ro`` is refused while the KMS holds its lock file open for writing,
    so a second, read-only tmpfs is mounted over the folder instead: new opens (the state
    write) land on it, the lock's open descriptor stays on the filesystem below.
    """
    copies = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    result = _mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(folder))
    assert result.returncode == 0, result.stderr
    for name, data in copies.items():
        (folder / name).write_bytes(data)
    result = _mount("-o", "remount,ro", str(folder))
    assert result.returncode == 0, result.stderr


def uncover(folder: Path) -> None:
    result = subprocess.run(["umount", str(folder)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


async def test_read_only_tmpfs(tmp_path: Path) -> None:
    """A real read-only remount, then the disk comes back."""
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        home = KmsHome.create(tmp_path / "kms")
        home.state_dir.rmdir()
        home.state_dir.symlink_to(mnt)
        read_only = Fault(
            "read-only", "Read-only file system", lambda: read_only_over(mnt), lambda: uncover(mnt)
        )
        await run_faults(home, [read_only], "disk faults (tmpfs)")


async def test_a_full_disk_leaves_the_spare_room_to_sign(tmp_path: Path) -> None:
    """Once running, the state is saved by rewriting the spare file in place: no new space.

    So a disk that fills up while the KMS runs costs no signature (each state durable on
    disk before its signature leaves); where there is no spare yet, the fill refuses to
    sign (``test_restart_on_a_full_disk_serves_and_recovers``).
    """
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        home = KmsHome.create(tmp_path / "kms")
        home.state_dir.rmdir()
        home.state_dir.symlink_to(mnt)
        laddr = Address(scheme="unix", path=str(home.root / "pv.sock"))
        ledger = Ledger(home.chain_id, home.verify_key)
        with trio.fail_after(60):
            async with (
                simulated_node(home.chain_id, laddr) as node,
                start_kms(home.write_config([str(laddr)])) as kms,
            ):
                client = await accept(node)
                run = DiskRun(home, kms, client, ledger, random.Random("full"))
                await run.sign_ok()  # the first save makes the spare
                fill(mnt / "filler")
                for _ in range(20):
                    await run.sign_ok()
                    assert home.load_state().hrs == (run.height, 0, 2)
                lines = kms.lines
        assert not ledger.conflicts() + log_book(lines).conflicts()
        assert not any("No space left" in line for line in lines)
        fault_counted("disk full, spare in place", requests=run.requests, signatures=21)


def test_first_start_on_a_full_or_read_only_disk_stops_with_the_file_named(tmp_path: Path) -> None:
    """No state file yet and no room to create one: exit 4, never a start from nowhere."""
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        home = KmsHome.create(tmp_path / "kms")
        home.state_dir.rmdir()
        home.state_dir.symlink_to(mnt)
        fill(mnt / "filler")
        result = start_fails(home)
        assert_refused_naming_the_file(home, result)
        assert "No space left on device" in result.stderr
        (mnt / "filler").unlink()
        read_only_over(mnt)
        try:
            result = start_fails(home)
        finally:
            uncover(mnt)
        assert_refused_naming_the_file(home, result)
        assert "Read-only file system" in result.stderr
    fault_counted("damaged state files", startups_refused=2)


async def test_restart_on_a_full_disk_serves_and_recovers(tmp_path: Path) -> None:
    """The state file is there but the disk is full: start, refuse to sign, recover.

    (Found by this test: the state lock's PID write hit ENOSPC and stopped the start with
    a bare "error: [Errno 28]" and exit code 1.)
    """
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        home = KmsHome.create(tmp_path / "kms")
        home.state_dir.rmdir()
        home.state_dir.symlink_to(mnt)
        StateFile(home.state_file).save(SignState.INITIAL)
        filler = mnt / "filler"
        fill(filler)
        full = Fault("disk full at start", "No space left on device", lambda: None, filler.unlink)
        await run_faults(home, [full], "disk faults (tmpfs)", first_sign=False)


# ---------------------------------------------------------------- unusable state files

GOOD = format_state(SignState(1234567, 2, 1, BlockRef(bytes(range(32)), 3, bytes(32)))).decode()

DAMAGED = {
    "empty": "",
    "whitespace": " \n\t",
    "truncated": GOOD[: len(GOOD) // 2],
    "one byte short": GOOD[:-1],
    "garbage": "this is not a state file",
    "binary": "\x00\x01\x02\xff",
    "null": "null",
    "array": "[]",
    "empty object": "{}",
    "step 3": GOOD.replace('"step":1', '"step":3'),
    "negative height": GOOD.replace('"1234567"', '"-1"'),
    "height as number": GOOD.replace('"1234567"', "1234567"),
    "NaN round": GOOD.replace('"round":"2"', '"round":NaN'),
    "cometbft layout": '{"height":"5","round":0,"step":2,"signature":"","signbytes":""}',
}


def start_fails(home: KmsHome) -> subprocess.CompletedProcess[str]:
    config = home.write_config([f"unix://{home.root}/pv.sock"])
    return run_tmkms("start", "-c", config)


def assert_refused_naming_the_file(home: KmsHome, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 4, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert str(home.state_file) in errors[0], errors[0]
    assert "connected to validator" not in result.stdout


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_state_file_stops_startup(tmp_path: Path, name: str) -> None:
    home = KmsHome.create(tmp_path)
    home.state_file.write_bytes(DAMAGED[name].encode("latin-1"))
    before = home.state_file.read_bytes()
    result = start_fails(home)
    assert_refused_naming_the_file(home, result)
    assert home.state_file.read_bytes() == before, "a damaged state file was overwritten"
    fault_counted("damaged state files", startups_refused=1)


def test_state_path_that_is_a_folder_stops_startup(tmp_path: Path) -> None:
    home = KmsHome.create(tmp_path)
    home.state_file.mkdir()
    assert_refused_naming_the_file(home, start_fails(home))


@pytest.mark.slow
def test_every_truncation_of_a_state_file_stops_startup(tmp_path: Path) -> None:
    """Prefixes of a valid file (a crash of a writer that does not rename) are all refused.

    The state-file unit tests parse every prefix; here 40 of them go through the process.
    """
    cuts = sorted({0, 1, len(GOOD) - 1, *random.Random(3).sample(range(len(GOOD)), 37)})
    for cut in cuts:
        home = KmsHome.create(tmp_path / str(cut))
        home.state_file.write_text(GOOD[:cut])
        assert_refused_naming_the_file(home, start_fails(home))
        fault_counted("damaged state files", startups_refused=1)
    home = KmsHome.create(tmp_path / "whole")
    home.state_file.write_text(GOOD)
    assert StateFile(home.state_file).load().height == 1234567
