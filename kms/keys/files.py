"""Secret files on disk: reading one-line base64 keys, writing 0600 files, permission checks.

Error messages name the file and what is wrong with it, never the file's contents.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from kms.errors import KeyFileError
from kms.logs import register_secret

SECRET_FILE_MODE = 0o600
SECRET_DIR_MODE = 0o700


def read_secret_text(path: Path) -> str:
    """The text of a key file with surrounding whitespace removed; KeyFileError if unreadable."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: key file is not ASCII text") from exc


def decode_base64_secret(text: str, path: Path) -> bytes:
    """Decode one line of standard base64 (padding optional); KeyFileError naming ``path``."""
    if not text:
        raise KeyFileError(f"{path}: key file is empty")
    if any(c.isspace() for c in text):
        raise KeyFileError(f"{path}: key file must hold a single line of base64")
    register_secret(text)
    padded = text + "=" * (-len(text) % 4)
    try:
        secret = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{path}: key file is not valid base64") from exc
    register_secret(secret)
    return secret


def read_base64_secret(path: Path) -> bytes:
    """Read and decode a one-line base64 key file."""
    return decode_base64_secret(read_secret_text(path), path)


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (and missing parents) with mode 0700; existing ones are left alone."""
    missing: list[Path] = []
    current = Path(directory)
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=SECRET_DIR_MODE)
            os.chmod(each, SECRET_DIR_MODE)
        except FileExistsError:
            continue
        except OSError as exc:
            raise KeyFileError(f"{each}: cannot create directory: {exc.strerror or exc}") from exc


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600, durably.

    Refuses to replace an existing file unless ``overwrite``; a replacement is written to a
    temporary file first and renamed over the old one, so a crash never leaves a torn key.
    Parent directories that do not exist are created with mode 0700.
    """
    path = Path(path)
    register_secret(data)
    ensure_private_dir(path.parent)
    if not overwrite:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
        except FileExistsError as exc:
            raise KeyFileError(
                f"{path}: refusing to overwrite an existing file (use --force)"
            ) from exc
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot create file: {exc.strerror or exc}") from exc
        try:
            _write_all(fd, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            raise KeyFileError(f"{path}: cannot write file: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
        return
    try:
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create file: {exc.strerror or exc}") from exc
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp_name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise KeyFileError(f"{path}: cannot write file: {exc.strerror or exc}") from exc
    _fsync_dir(path.parent)


def write_base64_secret(path: Path, secret: bytes, *, overwrite: bool = False) -> None:
    """Store ``secret`` as one line of standard base64, as tmkms does (no trailing newline)."""
    write_secret_file(path, base64.b64encode(secret), overwrite=overwrite)


def readable_by_others(path: Path) -> bool:
    """Whether group or others have any permission on ``path`` (False if it cannot be stat'ed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(stat.S_IMODE(mode) & 0o077)


def warn_if_readable_by_others(path: Path, log: logging.Logger) -> bool:
    """Log a warning when a key file is accessible by group or others; True if it warned."""
    if not readable_by_others(path):
        return False
    mode = stat.S_IMODE(os.stat(path).st_mode)
    log.warning(
        "%s is accessible by group or others (mode %04o); fix with: chmod 600 %s",
        path,
        mode,
        path,
    )
    return True


def _write_all(fd: int, data: bytes) -> None:
    os.fchmod(fd, SECRET_FILE_MODE)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
