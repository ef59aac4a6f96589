"""The tmkms state file: exact bytes, tolerant reads, refusals, and durable writes."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.chain import store as store_module
from kms.chain.state import BlockRef, SignState
from kms.chain.stateformat import format_state, parse_state
from kms.chain.store import StateFile, read_state
from kms.errors import StateError

HASH = bytes.fromhex("26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D")
PARTS = bytes.fromhex("72DB3D959635DFF1BB567BEDAA70573392C5159666A3F8CAF11E413AAC52207A")
BLOCK = BlockRef(HASH, 1, PARTS)
STATE = SignState(3399910, 1, 2, BLOCK)

INITIAL_JSON = (
    '{"height":"0","round":"0","step":0,"block_id":{"hash":"","parts":{"total":0,"hash":""}}}'
)
STATE_JSON = (
    '{"height":"3399910","round":"1","step":2,"block_id":{"hash":'
    '"26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D","parts":{"total":1,'
    '"hash":"72DB3D959635DFF1BB567BEDAA70573392C5159666A3F8CAF11E413AAC52207A"}}}'
)


# ---------------------------------------------------------------- format


def test_format_is_byte_exact_tmkms(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "chain_priv_validator_state.json")
    state_file.save(STATE)
    assert state_file.path.read_text() == STATE_JSON
    state_file.save(SignState.INITIAL)
    assert state_file.path.read_text() == INITIAL_JSON


def test_missing_file_is_created_at_height_zero(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert StateFile(path).load() == SignState.INITIAL
    assert path.read_text() == INITIAL_JSON
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_written_file_is_0600_even_over_a_0644_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(INITIAL_JSON)
    path.chmod(0o644)
    StateFile(path).save(STATE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_round_trip_through_disk(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "s.json")
    for state in (STATE, SignState(7, 0, 1), SignState(2**63 - 1, 2**31 - 1, 0, BLOCK)):
        state_file.save(state)
        assert StateFile(state_file.path).load() == state


hashes = st.one_of(st.just(b""), st.binary(min_size=32, max_size=32))
any_state = st.builds(
    SignState,
    height=st.integers(0, 2**63 - 1),
    round=st.integers(0, 2**31 - 1),
    step=st.integers(0, 2),
    block=st.builds(
        BlockRef, hash=hashes, parts_total=st.integers(0, 2**32 - 1), parts_hash=hashes
    ),
)


@given(any_state)
def test_format_parse_round_trip(state: SignState) -> None:
    assert parse_state(format_state(state)) == state


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "s.json")
    for height in range(20):
        state_file.save(SignState(height, 0, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.json.spare.tmp", "s.json"]


def test_saves_swap_the_state_file_with_its_spare(tmp_path: Path) -> None:
    """Two inodes take turns: the state file's is never written while it holds the state."""
    path = tmp_path / "s.json"
    spare = tmp_path / ".s.json.spare.tmp"
    state_file = StateFile(path)
    state_file.save(SignState(1, 0, 0))  # no state file yet: the spare is renamed over
    assert not spare.exists()
    state_file.save(SignState(2, 0, 0))  # a new spare, swapped with the state file
    first, second = path.stat().st_ino, spare.stat().st_ino
    assert parse_state(spare.read_bytes()) == SignState(1, 0, 0)  # the previous state
    state_file.save(SignState(3, 0, 0, BLOCK))  # longer, then shorter again
    state_file.save(SignState(4, 0, 0))
    assert (path.stat().st_ino, spare.stat().st_ino) == (first, second)
    assert path.read_bytes() == format_state(SignState(4, 0, 0))  # no tail of the longer one
    assert spare.read_bytes() == format_state(SignState(3, 0, 0, BLOCK))


@pytest.mark.parametrize("intruder", ["symlink", "hardlink"])
def test_a_spare_that_is_not_ours_alone_is_replaced(tmp_path: Path, intruder: str) -> None:
    """The spare is rewritten in place: never through a link into someone else's file."""
    path = tmp_path / "s.json"
    spare = tmp_path / ".s.json.spare.tmp"
    other = tmp_path / "other.txt"
    other.write_text("precious")
    state_file = StateFile(path)
    state_file.save(SignState(1, 0, 0))
    if intruder == "symlink":
        spare.symlink_to(other)
    else:
        os.link(other, spare)
    state_file.save(SignState(2, 0, 0))
    assert other.read_text() == "precious"
    assert state_file.load() == SignState(2, 0, 0)


def test_a_spare_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "s.json")
    state_file.save(SignState(1, 0, 0))
    spare = tmp_path / ".s.json.spare.tmp"
    spare.write_text("copied in by hand")
    spare.chmod(0o644)
    state_file.save(SignState(2, 0, 0))  # the spare (now the state file) is rewritten
    assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o600
    assert state_file.load() == SignState(2, 0, 0)


def test_a_spare_this_user_cannot_write_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root's spare (left by a `tmkms state` run as root) must not stop a KMS run as a user."""
    state_file = StateFile(tmp_path / "s.json")
    state_file.save(SignState(1, 0, 0))
    spare = tmp_path / ".s.json.spare.tmp"
    spare.write_text("root's")
    real_open = os.open

    def open_as_another_user(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(spare) and not flags & os.O_EXCL:
            raise PermissionError(errno.EACCES, "Permission denied", str(spare))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "open", open_as_another_user)
    state_file.save(SignState(2, 0, 0))
    monkeypatch.undo()
    assert state_file.load() == SignState(2, 0, 0)


def test_an_unexpected_error_mid_save_frees_the_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = StateFile(tmp_path / "s.json")
    state_file.save(SignState(1, 0, 0))
    monkeypatch.setattr(store_module.os, "fsync", _fail_with(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        state_file.save(SignState(2, 0, 0))
    monkeypatch.undo()
    exchanges: list[str] = []
    real_exchange = store_module.rename_exchange

    def exchange(src: str, dst: str) -> bool:
        exchanges.append(os.path.basename(src))
        return real_exchange(src, dst)

    monkeypatch.setattr(store_module, "rename_exchange", exchange)
    state_file.save(SignState(3, 0, 0))
    assert exchanges == [".s.json.spare.tmp"]  # the spare again, not a one-off temp file
    assert state_file.load() == SignState(3, 0, 0)
    assert _leftovers(tmp_path) == []


def _fail_with(exc: BaseException) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def test_without_the_exchange_the_spare_is_renamed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without RENAME_EXCHANGE gets the classic temp file + rename."""
    monkeypatch.setattr(store_module, "rename_exchange", lambda src, dst: False)
    path = tmp_path / "s.json"
    state_file = StateFile(path)
    for height in range(1, 4):
        state_file.save(SignState(height, 0, 0))
        assert state_file.load() == SignState(height, 0, 0)
        assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


# ---------------------------------------------------------------- tolerant reads


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"height":"5","round":"1","step":1,"block_id":null}',
            SignState(5, 1, 1, BlockRef.NIL),
        ),
        (
            # tendermint-rs' own test input: part_set_header, total as a string, pretty-printed
            '{\n "height": "5",\n "round": "1",\n "step": 2,\n "block_id": {\n  "hash": "'
            + HASH.hex().upper()
            + '",\n  "part_set_header": {"total": "1", "hash": "'
            + PARTS.hex().upper()
            + '"}\n }\n}\n',
            SignState(5, 1, 2, BLOCK),
        ),
        (
            # lower-case hex, extra keys are ignored
            '{"height":"9","round":"0","step":0,"extra":true,"block_id":{"hash":"'
            + HASH.hex()
            + '","parts":{"total":1,"hash":"'
            + PARTS.hex()
            + '"}}}',
            SignState(9, 0, 0, BLOCK),
        ),
        (
            '{"height":"9","round":"0","step":0,"block_id":{"hash":null,"parts":{"total":0,"hash":null}}}',
            SignState(9, 0, 0, BlockRef.NIL),
        ),
    ],
    ids=[
        "null-block-id",
        "part-set-header-and-string-total",
        "lowercase-extra-keys",
        "null-hashes",
    ],
)
def test_tolerant_reads(tmp_path: Path, text: str, expected: SignState) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    assert StateFile(path).load() == expected


# ---------------------------------------------------------------- refusals


def _with_block(block_id: str) -> str:
    return '{"height":"1","round":"0","step":0,"block_id":' + block_id + "}"


BAD_FILES = {
    "empty": "",
    "whitespace": "  \n",
    "not-json": "hello",
    "list": "[]",
    "nan-step": '{"height":"1","round":"0","step":NaN,"block_id":null}',
    "height-int": '{"height":1,"round":"0","step":0,"block_id":null}',
    "height-negative": '{"height":"-1","round":"0","step":0,"block_id":null}',
    "height-spaces": '{"height":" 1","round":"0","step":0,"block_id":null}',
    "height-underscore": '{"height":"1_0","round":"0","step":0,"block_id":null}',
    "height-unicode-digit": '{"height":"\\u0661","round":"0","step":0,"block_id":null}',
    "height-too-big": '{"height":"9223372036854775808","round":"0","step":0,"block_id":null}',
    "round-int": '{"height":"1","round":0,"step":0,"block_id":null}',
    "round-too-big": '{"height":"1","round":"2147483648","step":0,"block_id":null}',
    "step-string": '{"height":"1","round":"0","step":"0","block_id":null}',
    "step-bool": '{"height":"1","round":"0","step":true,"block_id":null}',
    "step-3": '{"height":"1","round":"0","step":3,"block_id":null}',
    "step-negative": '{"height":"1","round":"0","step":-1,"block_id":null}',
    "missing-height": '{"round":"0","step":0,"block_id":null}',
    "missing-block-id": '{"height":"1","round":"0","step":0}',
    "block-id-string": '{"height":"1","round":"0","step":0,"block_id":"AB"}',
    "parts-missing": _with_block('{"hash":"AB"}'),
    "parts-null": _with_block('{"hash":"AB","parts":null}'),
    "hash-missing": _with_block('{"parts":{"total":0,"hash":""}}'),
    "hash-not-hex": _with_block('{"hash":"XY","parts":{"total":0,"hash":""}}'),
    "hash-odd": _with_block('{"hash":"ABC","parts":{"total":0,"hash":""}}'),
    "hash-spaces": _with_block('{"hash":"AB CD","parts":{"total":0,"hash":""}}'),
    "parts-hash-not-hex": _with_block('{"hash":"","parts":{"total":0,"hash":"G0"}}'),
    "total-negative": _with_block('{"hash":"","parts":{"total":-1,"hash":""}}'),
    "total-float": _with_block('{"hash":"","parts":{"total":1.0,"hash":""}}'),
    "total-huge": _with_block('{"hash":"","parts":{"total":4294967296,"hash":""}}'),
    "total-bad-string": _with_block('{"hash":"","parts":{"total":"x","hash":""}}'),
    "cometbft-format": '{"height":"5","round":0,"step":3,"signature":"","signbytes":""}',
}


@pytest.mark.parametrize("text", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_files_stop_startup_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cosmoshub-4_priv_validator_state.json"
    path.write_text(text)
    with pytest.raises(StateError, match=r"cosmoshub-4_priv_validator_state\.json"):
        StateFile(path).load()
    assert path.read_text() == text  # never "repaired" behind the operator's back


def test_every_truncation_of_a_valid_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    for length in range(len(STATE_JSON)):
        path.write_text(STATE_JSON[:length])
        with pytest.raises(StateError, match=r"s\.json"):
            StateFile(path).load()


def test_invalid_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b'{"height":"\xff"}')
    with pytest.raises(StateError, match=r"s\.json"):
        StateFile(path).load()


def test_unreadable_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(StateError, match=r"dir\.json"):
        StateFile(tmp_path / "dir.json").load()


def test_read_state_only_reads(tmp_path: Path) -> None:
    """The reader of `tmkms state show`: no file is None, and nothing is created or removed."""
    path = tmp_path / "state.json"
    assert read_state(path) is None
    assert not path.exists()
    stale = tmp_path / ".state.json.123.0.tmp"
    stale.write_text(INITIAL_JSON)
    path.write_text(STATE_JSON)
    assert read_state(path) == STATE
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name, path.name]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"^cannot parse state file \S+s\.json: it is empty \(truncated\?\); refusing"),
        (" \n", r"^cannot parse state file \S+s\.json: it is empty"),
        ("{", r"^cannot parse state file \S+s\.json: Expecting property name"),
        (None, r"^cannot read state file \S+s\.json: Is a directory$"),
    ],
)
def test_read_state_and_load_refuse_alike(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "s.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    for read in (read_state, lambda p: StateFile(p).load()):
        with pytest.raises(StateError, match=message):
            read(path)


# ---------------------------------------------------------------- durability and failed writes


def _record_io(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace
    real_exchange = store_module.rename_exchange

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        kind = "dir" if stat.S_ISDIR(mode) else "file"
        events.append((f"fsync-{kind}", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    def exchange(src: str, dst: str) -> bool:
        inode = os.stat(src).st_ino
        swapped = real_exchange(src, dst)
        if swapped:
            events.append(("exchange", inode))
        return swapped

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(store_module, "rename_exchange", exchange)
    return events


def test_save_fsyncs_file_then_renames_then_fsyncs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_io(monkeypatch)
    path = tmp_path / "s.json"
    state_file = StateFile(path)
    state_file.save(SignState.INITIAL)  # creates the file: the temp file is renamed over
    state_file.save(STATE)  # then each save swaps the spare in
    expected = ["fsync-file", "replace", "fsync-dir", "fsync-file", "exchange", "fsync-dir"]
    assert [name for name, _ in events] == expected
    for first in (0, 3):
        synced, renamed, folder = (inode for _, inode in events[first : first + 3])
        assert synced == renamed  # the file swapped in is the one synced
        assert folder == tmp_path.stat().st_ino  # and the folder holding it
    assert events[4][1] == path.stat().st_ino


def test_creating_a_missing_file_is_durable_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_io(monkeypatch)
    StateFile(tmp_path / "s.json").load()
    assert [name for name, _ in events] == ["fsync-file", "replace", "fsync-dir"]


def _fail(exc_errno: int) -> Any:
    return _fail_with(OSError(exc_errno, os.strerror(exc_errno)))


@pytest.mark.parametrize(
    ("name", "err"),
    [
        ("fsync", errno.EIO),
        ("replace", errno.EROFS),
        ("exchange", errno.EROFS),
        ("write", errno.ENOSPC),
        ("ftruncate", errno.EIO),
        ("open", errno.EACCES),
    ],
)
def test_failed_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, err: int
) -> None:
    path = tmp_path / "s.json"
    state_file = StateFile(path)
    if name == "ftruncate":  # only when the spare holds a longer state than the new one
        longer = SignState(2**62, 2**30, 2, BLOCK)
        state_file.save(longer)
        state_file.save(longer)
    state_file.save(SignState.INITIAL)
    if name == "replace":  # no exchange here: the temp file is renamed over
        monkeypatch.setattr(store_module, "rename_exchange", lambda src, dst: False)
    if name == "exchange":
        monkeypatch.setattr(store_module, "rename_exchange", _fail(err))
    else:
        monkeypatch.setattr(store_module.os, name, _fail(err))
    with pytest.raises(StateError, match=r"s\.json") as info:
        state_file.save(STATE)
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == err
    assert path.read_text() == INITIAL_JSON
    assert state_file.load() == SignState.INITIAL
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # temp file cleaned up


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def one_byte(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(store_module.os, "write", one_byte)
    StateFile(tmp_path / "s.json").save(STATE)
    monkeypatch.undo()
    assert (tmp_path / "s.json").read_text() == STATE_JSON


def test_folder_fsync_failure_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    with pytest.raises(StateError, match="folder"):
        StateFile(tmp_path / "s.json").save(STATE)


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    state_file = StateFile(tmp_path / "blocker" / "s.json")
    with pytest.raises(StateError, match="blocker"):
        state_file.save(STATE)
    with pytest.raises(StateError, match="blocker"):
        state_file.load()


def test_missing_folder_on_first_load(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="nowhere"):
        StateFile(tmp_path / "nowhere" / "s.json").load()


# ---------------------------------------------------------------- save_all: the group commit


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _inject(monkeypatch: pytest.MonkeyPatch, op: str, exc: BaseException, target: str) -> None:
    """Make ``os.<op>`` (or the exchange) raise ``exc`` when it touches a path with ``target``."""
    real = store_module.rename_exchange if op == "exchange" else getattr(os, op)

    def touched(args: tuple[Any, ...]) -> str:
        paths = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
        return _fd_path(args[0]) if isinstance(args[0], int) else " ".join(map(str, paths))

    def patched(*args: Any, **kwargs: Any) -> Any:
        if target in touched(args):
            raise exc
        return real(*args, **kwargs)

    if op == "exchange":
        monkeypatch.setattr(store_module, "rename_exchange", patched)
    else:
        monkeypatch.setattr(store_module.os, op, patched)


def _five_files(tmp_path: Path) -> list[StateFile]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [StateFile(tmp_path / ("a" if i < 3 else "b") / f"c{i}.json") for i in range(5)]
    for state_file in files:
        state_file.save(SignState.INITIAL)
    return files


def _states(count: int) -> list[SignState]:
    return [SignState(100 + i, i, 2, BLOCK) for i in range(count)]


def _leftovers(tmp_path: Path) -> list[str]:
    """Temp files other than the spares, which stay beside their state files by design."""
    return sorted(
        p.name
        for p in tmp_path.rglob("*")
        if p.name.endswith(".tmp") and not p.name.endswith(".spare.tmp")
    )


def test_save_all_fsyncs_every_file_renames_then_fsyncs_each_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _five_files(tmp_path)
    states = _states(5)
    events = _record_io(monkeypatch)
    outcomes = store_module.save_all(list(zip(files, states, strict=True)))
    monkeypatch.undo()
    assert outcomes == [None] * 5
    kinds = [name for name, _ in events]
    assert kinds == ["fsync-file"] * 5 + ["exchange"] * 5 + ["fsync-dir"] * 2
    synced = [inode for name, inode in events if name == "fsync-file"]
    renamed = [inode for name, inode in events if name == "exchange"]
    assert renamed == [f.path.stat().st_ino for f in files]  # in order
    assert sorted(synced) == sorted(renamed)  # each one synced (side by side) was swapped in
    folders = {inode for name, inode in events if name == "fsync-dir"}
    assert folders == {(tmp_path / "a").stat().st_ino, (tmp_path / "b").stat().st_ino}
    assert [f.load() for f in files] == states
    assert _leftovers(tmp_path) == []


def test_save_all_fsyncs_the_files_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c0's fsync waits until every other file's fsync has begun: only side by side can it."""
    files = _five_files(tmp_path)
    others_entered = threading.Semaphore(0)
    real_fsync = os.fsync
    released_by_others = []

    def fsync(fd: int) -> None:
        path = _fd_path(fd)
        if ".c0.json." in path:
            released_by_others.append(all(others_entered.acquire(timeout=5) for _ in range(4)))
        elif not stat.S_ISDIR(os.fstat(fd).st_mode):
            others_entered.release()
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    outcomes = store_module.save_all(list(zip(files, _states(5), strict=True)))
    monkeypatch.undo()
    assert outcomes == [None] * 5
    assert released_by_others == [True]
    assert [f.load() for f in files] == _states(5)


def test_a_large_batch_fsyncs_in_a_few_lanes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a thread per file, c0's fsync still waits for the other lanes' first fsyncs,
    and no more fsyncs than lanes ever run at once."""
    count = store_module._THREAD_EACH_UP_TO + 4
    lanes = store_module._FSYNC_LANES
    files = [StateFile(tmp_path / f"c{i}.json") for i in range(count)]
    states = [SignState(i + 1, 0, 0) for i in range(count)]
    others_entered = threading.Semaphore(0)
    real_fsync = os.fsync
    released_by_others = []
    lock = threading.Lock()
    running, most = 0, 0

    def fsync(fd: int) -> None:
        nonlocal running, most
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            real_fsync(fd)
            return
        with lock:
            running += 1
            most = max(most, running)
        if ".c0.json." in _fd_path(fd):
            waits = [others_entered.acquire(timeout=5) for _ in range(lanes - 1)]
            released_by_others.append(all(waits))
        else:
            others_entered.release()
        real_fsync(fd)
        with lock:
            running -= 1

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    outcomes = store_module.save_all(list(zip(files, states, strict=True)))
    monkeypatch.undo()
    assert outcomes == [None] * count
    assert released_by_others == [True]
    assert 2 <= most <= lanes  # c0 waited beside another lane, never more than the lanes
    assert [f.load() for f in files] == states


@pytest.mark.parametrize(
    ("op", "err"),
    [
        ("open", errno.EACCES),
        ("write", errno.ENOSPC),
        ("fsync", errno.EIO),
        ("exchange", errno.EROFS),
    ],
)
def test_save_all_fails_only_the_item_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, err: int
) -> None:
    files = _five_files(tmp_path)
    states = _states(5)
    _inject(monkeypatch, op, OSError(err, os.strerror(err)), ".c2.json.")  # c2's temp file
    outcomes = store_module.save_all(list(zip(files, states, strict=True)))
    monkeypatch.undo()
    failed = outcomes[2]
    assert isinstance(failed, StateError)
    assert "c2.json" in str(failed)
    assert isinstance(failed.__cause__, OSError)
    assert failed.__cause__.errno == err
    assert outcomes[:2] + outcomes[3:] == [None] * 4
    assert files[2].load() == SignState.INITIAL  # old file intact
    assert [f.load() for i, f in enumerate(files) if i != 2] == states[:2] + states[3:]
    assert _leftovers(tmp_path) == []


def test_save_all_folder_fsync_failure_fails_every_item_of_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _five_files(tmp_path)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if _fd_path(fd) == str(tmp_path / "a"):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    outcomes = store_module.save_all(list(zip(files, _states(5), strict=True)))
    monkeypatch.undo()
    for index in range(3):  # folder a: each fails, naming its own file
        error = outcomes[index]
        assert isinstance(error, StateError)
        assert f"folder of state file {files[index].path}" in str(error)
        assert isinstance(error.__cause__, OSError)
        assert error.__cause__.errno == errno.EIO
    assert outcomes[3:] == [None, None]
    assert [f.load() for f in files[3:]] == _states(5)[3:]


def test_save_all_same_file_twice_keeps_the_last(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "s.json")
    first, second = _states(2)
    assert store_module.save_all([(state_file, first), (state_file, second)]) == [None, None]
    assert state_file.load() == second
    assert _leftovers(tmp_path) == []


def test_save_all_cleans_up_after_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _five_files(tmp_path)
    open_fds = len(os.listdir("/proc/self/fd"))
    _inject(monkeypatch, "fsync", RuntimeError("bug"), ".c3.json.")
    with pytest.raises(RuntimeError, match="bug"):
        store_module.save_all(list(zip(files, _states(5), strict=True)))
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == open_fds  # every temp file closed
    assert _leftovers(tmp_path) == []  # and removed
    assert [f.load() for f in files] == [SignState.INITIAL] * 5  # nothing was renamed


def test_save_all_of_nothing(tmp_path: Path) -> None:
    assert store_module.save_all([]) == []


def test_phases_must_run_in_order(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "s.json")
    temp = state_file.write_temp(STATE)
    with pytest.raises(ValueError, match="synced before"):
        state_file.install(temp)
    state_file.sync_temp(temp)
    with pytest.raises(ValueError, match="already synced"):
        state_file.sync_temp(temp)
    state_file.install(temp)
    state_file.sync_folder()
    assert state_file.load() == STATE
    assert _leftovers(tmp_path) == []


def test_stale_temp_files_of_this_state_file_are_removed(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "chain.json")
    store.save(SignState(4, 0, 1))
    store.save(SignState(5, 0, 1))
    spare = tmp_path / ".chain.json.spare.tmp"
    assert spare.exists()
    left = tmp_path / ".chain.json.999.7.tmp"
    left.write_bytes(b'{"height":"9"')
    other = tmp_path / ".other.json.999.7.tmp"
    other.write_bytes(b"not ours")
    assert store.remove_stale_temps() == [left.name]
    assert not left.exists() and other.exists()
    assert spare.exists()  # not a leftover: the room the next save writes into
    assert store.load() == SignState(5, 0, 1)
