"""The state writer: inline when idle, threads (state saves batched) under load or after a stall."""

from __future__ import annotations

import errno
import functools
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kms.chain import store as store_module
from kms.chain import writer as writer_module
from kms.chain.durable import DurableFile
from kms.chain.local import LocalStore
from kms.chain.state import BlockRef, SignState
from kms.chain.stateformat import parse_state
from kms.chain.store import StateFile
from kms.chain.writer import StateWriter
from kms.errors import StateError
from tests.support.durable import ShimFile


def _on_loop_thread(main: int) -> bool:
    return threading.get_ident() == main


async def test_writes_inline_when_nothing_else_is_runnable() -> None:
    writer = StateWriter()
    main = threading.get_ident()
    assert await writer.run(lambda: _on_loop_thread(main), key="c")
    assert (writer.inline_writes, writer.threaded_writes) == (1, 0)


async def test_chains_writing_together_use_threads() -> None:
    writer = StateWriter()
    main = threading.get_ident()
    places: list[bool] = []

    async def write(chain: str) -> None:
        places.append(await writer.run(lambda: _on_loop_thread(main), key=chain))

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(write, f"chain-{index}")
    assert places.count(False) >= 3, "all but the first of chains writing together use threads"


async def test_one_chain_writing_back_to_back_stays_inline() -> None:
    writer = StateWriter()
    main = threading.get_ident()
    for _ in range(5):
        assert await writer.run(lambda: _on_loop_thread(main), key="only")
    assert writer.inline_writes == 5


async def test_concurrent_threaded_writes_overlap() -> None:
    writer = StateWriter(trio.CapacityLimiter(8), slow_write=1.0)
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(functools.partial(writer.run, slow, key=f"chain-{index}"))
    assert peak >= 4
    assert writer.threaded_writes >= 5
    assert time.monotonic() - started < 6 * 0.05


async def test_a_slow_inline_write_sends_writes_to_threads_for_the_cool_down() -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    def stall() -> None:
        now[0] += 0.5  # the disk took half a second

    writer = StateWriter(slow_write=0.005, cool_down=30.0, clock=clock)
    main = threading.get_ident()
    await writer.run(stall, key="c")
    assert writer.inline_writes == 1
    assert not await writer.run(lambda: _on_loop_thread(main), key="c")
    now[0] += 31.0
    assert await writer.run(lambda: _on_loop_thread(main), key="c")


async def test_inline_false_always_uses_threads() -> None:
    writer = StateWriter(inline=False)
    main = threading.get_ident()
    assert not await writer.run(lambda: _on_loop_thread(main), key="c")
    assert writer.threaded_writes == 1


# ---------------------------------------------------------------- group commit of state saves

BLOCK = BlockRef(b"\x11" * 32, 1, b"\x22" * 32)


def at(height: int) -> SignState:
    return SignState(height, 0, 2, BLOCK)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _matches(fragment: str, path: str) -> bool:
    """``path`` is ``fragment`` (a folder), or its name contains it (".c1.json.": c1's temp)."""
    return path == fragment or fragment in os.path.basename(path)


class Gate:
    """Holds a worker thread in an fsync until released."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()

    async def reached(self) -> None:
        """Wait until the worker thread is held here, and every task is blocked."""
        assert await trio.to_thread.run_sync(self.arrived.wait, 10)
        await trio.testing.wait_all_tasks_blocked()


class Disk:
    """Records the state write syscalls in order, and can hold or fail some of them.

    Events: ("fsync", path) once an fsync returned (a temp file's path, or a folder's),
    ("replace", temp, target) once a rename over or an exchange with the state file returned,
    ("resumed", key) from the callers.
    ``gate(fragment)`` holds the fsync of a file :func:`_matches` ``fragment``;
    ``fail[(op, fragment)] = errno`` makes that op fail on such a path.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, ...]] = []
        self.gates: dict[str, Gate] = {}
        self.fail: dict[tuple[str, str], int] = {}
        self.batches: list[list[str]] = []
        real_fsync, real_replace, real_write = os.fsync, os.replace, os.write
        real_save_all = writer_module.save_all
        real_exchange = store_module.rename_exchange

        def fsync(fd: int) -> None:
            path = _fd_path(fd)
            for fragment, gate in self.gates.items():
                if _matches(fragment, path):
                    gate.arrived.set()
                    assert gate.released.wait(10), "held too long"
            self._maybe_fail("fsync", path)
            real_fsync(fd)
            self.events.append(("fsync", path))

        def write(fd: int, data: Any) -> int:
            self._maybe_fail("write", _fd_path(fd))
            return real_write(fd, data)

        def replace(src: Any, dst: Any) -> None:
            self._maybe_fail("replace", os.fspath(src))
            real_replace(src, dst)
            self.events.append(("replace", os.fspath(src), os.fspath(dst)))

        def exchange(src: str, dst: str) -> bool:
            self._maybe_fail("replace", src)
            swapped = real_exchange(src, dst)
            if swapped:
                self.events.append(("replace", src, dst))
            return swapped

        def save_all(saves: list[tuple[StateFile, SignState]]) -> list[StateError | None]:
            self.batches.append(sorted(store.path.stem for store, _ in saves))
            return real_save_all(saves)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(store_module, "rename_exchange", exchange)
        monkeypatch.setattr(writer_module, "save_all", save_all)

    def gate(self, fragment: str) -> Gate:
        gate = self.gates[fragment] = Gate()
        return gate

    def _maybe_fail(self, op: str, path: str) -> None:
        for (failing, fragment), code in self.fail.items():
            if failing == op and _matches(fragment, path):
                raise OSError(code, os.strerror(code))

    def index(self, *event: str) -> int:
        return self.events.index(event)


def _files(tmp_path: Path, names: list[str], folder: str = "a") -> list[StateFile]:
    (tmp_path / folder).mkdir(exist_ok=True)
    files = [StateFile(tmp_path / folder / f"{name}.json") for name in names]
    for state_file in files:
        state_file.save(SignState.INITIAL)
    return files


async def _save(
    writer: StateWriter, store: DurableFile, state: SignState, disk: Disk | None = None
) -> None:
    await LocalStore(store, writer).save(state)
    if disk is not None:
        disk.events.append(("resumed", store.path.stem))


async def _start_blocker(
    nursery: trio.Nursery, writer: StateWriter, disk: Disk, tmp_path: Path
) -> threading.Event:
    """A first batch (chain "blocker", folder z) held in its fsync until the event is set."""
    (blocker,) = _files(tmp_path, ["blocker"], folder="z")
    gate = disk.gate(".blocker.json.")
    nursery.start_soon(_save, writer, blocker, at(1), disk)
    await gate.reached()
    assert disk.batches == [["blocker"]]
    return gate.released


def _leftovers(tmp_path: Path) -> list[Path]:
    """Temp files other than the spares, which stay beside their state files by design."""
    return [p for p in tmp_path.rglob("*.tmp") if not p.name.endswith(".spare.tmp")]


async def test_an_idle_chain_saves_inline_without_a_batch(tmp_path: Path) -> None:
    (store,) = _files(tmp_path, ["c"])
    writer = StateWriter()
    await _save(writer, store, at(5))
    assert (writer.inline_writes, writer.batches) == (1, 0)
    assert store.load() == at(5)


async def test_chains_saving_together_share_batches(tmp_path: Path) -> None:
    files = _files(tmp_path, [f"c{i}" for i in range(10)])
    writer = StateWriter(trio.CapacityLimiter(8))
    async with trio.open_nursery() as nursery:
        for height, store in enumerate(files, start=1):
            nursery.start_soon(_save, writer, store, at(height))
    assert [f.load() for f in files] == [at(h) for h in range(1, 11)]
    # the first may write inline (nothing else was in the run queue yet), not the others
    assert writer.inline_writes + writer.batched_writes == 10
    assert writer.batched_writes >= 9
    assert writer.batches <= 2, "the chains that queued behind the first batch went together"
    assert writer.threaded_writes == 0
    assert _leftovers(tmp_path) == []


async def test_batch_fsyncs_each_temp_before_its_rename_and_each_folder_once_before_resuming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    files = _files(tmp_path, ["c0", "c1", "c2", "c3"], "a") + _files(tmp_path, ["c4", "c5"], "b")
    writer = StateWriter(inline=False)
    async with trio.open_nursery() as nursery:
        release = await _start_blocker(nursery, writer, disk, tmp_path)
        for height, store in enumerate(files, start=10):
            nursery.start_soon(_save, writer, store, at(height), disk)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert disk.batches == [["blocker"], ["c0", "c1", "c2", "c3", "c4", "c5"]]
    assert [f.load() for f in files] == [at(h) for h in range(10, 16)]
    # the second batch's events, in order
    events = disk.events[disk.index("resumed", "blocker") + 1 :]
    temp_fsyncs = [e[1] for e in events if e[0] == "fsync" and e[1].endswith(".tmp")]
    renames = [e for e in events if e[0] == "replace"]
    folder_fsyncs = [e[1] for e in events if e[0] == "fsync" and not e[1].endswith(".tmp")]
    assert sorted(temp_fsyncs) == sorted(r[1] for r in renames)  # every temp file fsync'd
    assert len(set(temp_fsyncs)) == len(temp_fsyncs) == 6
    assert sorted(folder_fsyncs) == [str(tmp_path / "a"), str(tmp_path / "b")]  # once each
    for _, temp, target in renames:
        assert events.index(("fsync", temp)) < events.index(("replace", temp, target))
    last_rename = max(events.index(r) for r in renames)
    first_folder = min(events.index(("fsync", f)) for f in folder_fsyncs)
    last_folder = max(events.index(("fsync", f)) for f in folder_fsyncs)
    assert last_rename < first_folder
    resumed = [i for i, e in enumerate(events) if e[0] == "resumed"]
    assert len(resumed) == 6
    assert min(resumed) > last_folder  # no caller back before its folder is durable
    assert _leftovers(tmp_path) == []


async def test_saves_queued_while_a_batch_is_written_go_in_the_next_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    first = _files(tmp_path, ["c0", "c1", "c2"])
    later = _files(tmp_path, ["c3", "c4"])
    writer = StateWriter(inline=False)
    second_batch = disk.gate(".c0.json.")
    async with trio.open_nursery() as nursery:
        release = await _start_blocker(nursery, writer, disk, tmp_path)
        for store in first:
            nursery.start_soon(_save, writer, store, at(7), disk)
        await trio.testing.wait_all_tasks_blocked()
        release.set()  # the first batch ends; c0..c2 go together, held in c0's fsync
        await second_batch.reached()
        assert disk.batches[-1] == ["c0", "c1", "c2"]
        for store in later:
            nursery.start_soon(_save, writer, store, at(8), disk)
        await trio.testing.wait_all_tasks_blocked()
        assert ("resumed", "c3") not in disk.events
        second_batch.released.set()
    assert disk.batches == [["blocker"], ["c0", "c1", "c2"], ["c3", "c4"]]
    assert [f.load() for f in first + later] == [at(7)] * 3 + [at(8)] * 2
    assert (writer.batches, writer.batched_writes) == (3, 6)


async def test_a_failed_item_fails_only_its_own_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    files = _files(tmp_path, ["c0", "c1", "c2", "c3"], "a") + _files(tmp_path, ["c4", "c5"], "b")
    disk.fail[("write", ".c1.json.")] = errno.ENOSPC
    disk.fail[("fsync", ".c2.json.")] = errno.EIO
    disk.fail[("fsync", str(tmp_path / "b"))] = errno.EIO  # folder b's fsync
    writer = StateWriter(inline=False)
    outcomes: dict[str, BaseException | None] = {}

    async def save(store: StateFile) -> None:
        try:
            await _save(writer, store, at(9))
        except StateError as exc:
            outcomes[store.path.stem] = exc
        else:
            outcomes[store.path.stem] = None

    async with trio.open_nursery() as nursery:
        release = await _start_blocker(nursery, writer, disk, tmp_path)
        for store in files:
            nursery.start_soon(save, store)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert disk.batches[1] == ["c0", "c1", "c2", "c3", "c4", "c5"]  # one batch
    assert outcomes["c0"] is None
    assert outcomes["c3"] is None
    for name, code, what in [
        ("c1", errno.ENOSPC, "writing state to"),
        ("c2", errno.EIO, "writing state to"),
        ("c4", errno.EIO, "syncing the folder of state file"),
        ("c5", errno.EIO, "syncing the folder of state file"),
    ]:
        error = outcomes[name]
        assert isinstance(error, StateError)
        assert f"{what} {tmp_path / ('b' if name in ('c4', 'c5') else 'a') / name}.json" in str(
            error
        )
        assert isinstance(error.__cause__, OSError)
        assert error.__cause__.errno == code
    assert [f.load() for f in files[:4]] == [at(9), SignState.INITIAL, SignState.INITIAL, at(9)]
    assert _leftovers(tmp_path) == []


async def test_cancelled_callers_come_back_only_once_their_save_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    plain, shielded = _files(tmp_path, ["plain", "shielded"])
    writer = StateWriter(inline=False)
    seen: dict[str, tuple[SignState, bool]] = {}
    scopes: list[trio.CancelScope] = []

    def durable_now(name: str) -> bool:
        return ("fsync", str(tmp_path / "a")) in disk.events[disk.index("resumed", "blocker") :]

    async def caller(store: StateFile, shield: bool) -> None:
        name = store.path.stem
        with trio.CancelScope() as outer:
            scopes.append(outer)
            with trio.CancelScope(shield=shield):  # as the tracker's _persist does
                await _save(writer, store, at(3))
                seen[name] = (store.load(), durable_now(name))
            await trio.lowlevel.checkpoint()  # the cancellation arrives here, afterwards
        assert outer.cancelled_caught

    async with trio.open_nursery() as nursery:
        release = await _start_blocker(nursery, writer, disk, tmp_path)
        nursery.start_soon(caller, plain, False)
        nursery.start_soon(caller, shielded, True)
        await trio.testing.wait_all_tasks_blocked()
        for scope in scopes:
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert seen == {}, "nobody returned while the batch before theirs was held"
        release.set()
    assert seen == {"plain": (at(3), True), "shielded": (at(3), True)}
    assert disk.batches == [["blocker"], ["plain", "shielded"]]


async def test_a_file_without_group_commit_is_not_batched(tmp_path: Path) -> None:
    calls: list[SignState] = []

    class Recording(ShimFile):
        def save(self, state: SignState) -> None:
            calls.append(state)
            super().save(state)

    store = Recording(tmp_path / "s.json")
    writer = StateWriter(inline=False)
    await _save(writer, store, at(4))
    assert calls == [at(4)]
    assert (writer.threaded_writes, writer.batches) == (1, 0)


async def test_back_to_inline_once_the_batches_are_done(tmp_path: Path) -> None:
    files = _files(tmp_path, ["c0", "c1", "c2"])
    writer = StateWriter(busy_window=0.01)
    async with trio.open_nursery() as nursery:
        for store in files:
            nursery.start_soon(_save, writer, store, at(2))
    assert writer.batched_writes >= 2
    inline = writer.inline_writes
    await trio.sleep(0.02)  # past the busy window
    await _save(writer, files[0], at(3))
    assert writer.inline_writes == inline + 1
    assert files[0].load() == at(3)


@pytest.mark.parametrize("seed", range(25))
async def test_random_schedules_end_with_every_chain_last_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Chains saving at random moments, some saves failing: files hold each chain's last save."""
    rng = random.Random(seed)
    chains = [f"c{i}" for i in range(rng.randint(2, 8))]
    files = _files(tmp_path, chains[::2], "a") + _files(tmp_path, chains[1::2], "b")
    failing = {(f.path.stem, h) for f in files for h in range(1, 13) if rng.random() < 0.15}
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        text = bytes(data).decode()
        name = os.path.basename(_fd_path(fd)).split(".")[1]
        if (name, parse_state(text).height) in failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    writer = StateWriter(trio.CapacityLimiter(8), busy_window=rng.choice([0.0, 0.005]))
    expected: dict[str, SignState] = {f.path.stem: SignState.INITIAL for f in files}
    delays = [rng.choice([None, 0.0, 0.0005, 0.002]) for _ in range(12 * len(files))]

    async def chain(store: StateFile) -> None:
        name = store.path.stem
        for height in range(1, 13):
            delay = delays.pop()
            if delay is not None:
                await trio.sleep(delay)
            try:
                await _save(writer, store, at(height))
            except StateError:
                assert (name, height) in failing
            else:
                assert (name, height) not in failing
                expected[name] = at(height)
            assert store.load() == expected[name]  # durable before the save returned

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for store in files:
                nursery.start_soon(chain, store)
    assert {f.path.stem: f.load() for f in files} == expected
    assert writer.inline_writes + writer.batched_writes == 12 * len(files)
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- prepared saves


async def test_a_prepared_save_changes_the_state_file_only_once_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    (store,) = _files(tmp_path, ["c"])
    disk.events.clear()
    writer = StateWriter()
    main = threading.get_ident()
    threads: list[int] = []
    real_write_temp = store.write_temp

    def write_temp(state: SignState) -> Any:
        threads.append(threading.get_ident())
        return real_write_temp(state)

    monkeypatch.setattr(store, "write_temp", write_temp)
    prepared = await LocalStore(store, writer).prepare(at(5))
    assert prepared is not None and writer.prepared_writes == 1
    assert threads and main not in threads  # written and fsync'd in a worker thread
    assert [e[0] for e in disk.events] == ["fsync"]  # the spare's data, nothing renamed
    assert store.load() == SignState.INITIAL  # what a crash now would leave
    await prepared.install()
    assert store.load() == at(5)
    spare = disk.events[0][1]
    assert disk.events[1:] == [
        ("replace", spare, str(store.path)),
        ("fsync", str(store.path.parent)),
    ]
    assert _leftovers(tmp_path) == []


async def test_a_discarded_prepared_save_leaves_the_state_file(tmp_path: Path) -> None:
    (store,) = _files(tmp_path, ["c"])
    local = LocalStore(store, StateWriter())
    await local.save(at(3))
    prepared = await local.prepare(at(4))
    assert prepared is not None
    prepared.discard()
    assert store.load() == at(3)
    await local.save(at(5))  # the next save makes a new spare
    assert store.load() == at(5)
    assert _leftovers(tmp_path) == []


async def test_no_prepared_save_while_other_chains_write(tmp_path: Path) -> None:
    mine, other = _files(tmp_path, ["mine", "other"])
    writer = StateWriter(busy_window=60.0)
    await _save(writer, other, at(1))  # another chain wrote just now: saves share batches
    assert await LocalStore(mine, writer).prepare(at(2)) is None
    await _save(writer, mine, at(3))
    prepared = await LocalStore(mine, writer).prepare(at(4))  # the last writer: it may
    assert prepared is not None
    prepared.discard()
    assert writer.prepared_writes == 1


async def test_a_failed_prepared_save_is_none_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    (store,) = _files(tmp_path, ["c"])
    disk.fail[("fsync", ".c.json.")] = errno.EIO
    assert await LocalStore(store, StateWriter()).prepare(at(2)) is None
    assert store.load() == SignState.INITIAL
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "a" / ".c.json.spare.tmp").exists()  # discarded, never installed


async def test_a_file_without_phases_is_not_prepared(tmp_path: Path) -> None:
    shim = ShimFile(tmp_path / "c.json")
    assert await LocalStore(shim, StateWriter()).prepare(at(1)) is None
