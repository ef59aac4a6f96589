"""rename_exchange: an atomic swap where the system offers one, a clear 'no' where not."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path
from typing import Any

import pytest

from kms.chain import exchange


def test_swaps_two_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("new")
    b.write_text("old")
    inode_a = a.stat().st_ino
    assert exchange.rename_exchange(str(a), str(b)) is True
    assert (a.read_text(), b.read_text()) == ("old", "new")
    assert b.stat().st_ino == inode_a  # names swapped, not contents copied


def test_a_missing_target_is_a_no_with_nothing_changed(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("new")
    assert exchange.rename_exchange(str(a), str(tmp_path / "b")) is False
    assert a.read_text() == "new" and not (tmp_path / "b").exists()


def _failing_with(code: int) -> Any:
    def renameat2(*args: Any) -> int:
        ctypes.set_errno(code)
        return -1

    return renameat2


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM])
def test_no_exchange_here_is_a_no(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(exchange, "_renameat2", _failing_with(code))
    assert exchange.rename_exchange(str(tmp_path / "a"), str(tmp_path / "b")) is False


def test_other_failures_raise_with_their_errno(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "_renameat2", _failing_with(errno.EIO))
    with pytest.raises(OSError) as caught:
        exchange.rename_exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert caught.value.errno == errno.EIO


def test_no_renameat2_in_the_c_library_is_a_no(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "_renameat2", None)
    assert exchange.rename_exchange(str(tmp_path / "a"), str(tmp_path / "b")) is False
