"""Secret files: one-line base64 in, 0600 files out, no key material in any message."""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.errors import KeyFileError
from kms.keys import (
    read_base64_secret,
    readable_by_others,
    warn_if_readable_by_others,
    write_base64_secret,
    write_secret_file,
)
from tests.support.files import mode

SECRET = bytes(range(32))
ENCODED = base64.b64encode(SECRET).decode()


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Modes must not depend on the caller's umask: run with the most permissive one."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "text",
    [ENCODED, ENCODED + "\n", ENCODED + "  \r\n\n", "  " + ENCODED, ENCODED.rstrip("=")],
    ids=["plain", "newline", "trailing-whitespace", "leading-whitespace", "no-padding"],
)
def test_read_accepts_tmkms_variants(tmp_path: Path, text: str) -> None:
    path = tmp_path / "key"
    path.write_text(text)
    assert read_base64_secret(path) == SECRET


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "key file is empty"),
        (b"   \n", "key file is empty"),
        (b"not-base64!", "key file is not valid base64"),
        (ENCODED[:20].encode() + b"\n" + ENCODED[20:].encode(), "must hold a single line"),
        (b"\xff\xfe" + ENCODED.encode(), "key file is not ASCII text"),
    ],
    ids=["empty", "blank", "garbage", "two-lines", "binary"],
)
def test_read_rejects_bad_files_without_echoing_them(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as caught:
        read_base64_secret(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert ENCODED[:20] not in message


def test_read_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError) as caught:
        read_base64_secret(path)
    assert str(caught.value) == f"{path}: cannot read key file: No such file or directory"
    assert isinstance(caught.value.__cause__, FileNotFoundError)


@pytest.mark.usefixtures("permissive_umask")
def test_write_creates_0600_file_and_0700_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "key"
    write_base64_secret(path, SECRET)
    assert path.read_text() == ENCODED  # one line, no newline: byte-identical to tmkms
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700
    assert read_base64_secret(path) == SECRET


@pytest.mark.usefixtures("permissive_umask")
def test_existing_parent_modes_are_left_alone(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    write_secret_file(parent / "key", b"x")
    assert mode(parent) == 0o755
    assert mode(parent / "key") == 0o600


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"precious")
    with pytest.raises(KeyFileError) as caught:
        write_secret_file(path, b"new")
    assert str(caught.value) == f"{path}: refusing to overwrite an existing file (use --force)"
    assert path.read_bytes() == b"precious"


@pytest.mark.usefixtures("permissive_umask")
def test_overwrite_replaces_atomically_with_0600(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_secret_file(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temp file left behind


def test_write_into_a_file_instead_of_a_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KeyFileError, match="cannot create file"):
        write_secret_file(blocker / "key", b"x")


def test_write_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_secret_file(tmp_path / "key", b"x")
    assert synced == ["file", "dir"]


def test_permission_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("kms.test")
    path = tmp_path / "key"
    path.write_bytes(b"x")
    path.chmod(0o600)
    assert not readable_by_others(path)
    assert warn_if_readable_by_others(path, log) is False
    assert caplog.records == []
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        assert warn_if_readable_by_others(path, log) is True
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"{path} is accessible by group or others (mode 0640); fix with: chmod 600 {path}"
    )
    assert warn_if_readable_by_others(tmp_path / "missing", log) is False
