"""Opt-in persistence of the simulated device's flash (objects, options) to a JSON file.

Written atomically (temporary file, fsync, rename, fsync of the directory) after every
command that changed flash, so a killed simulator restarts with its keys, like the real
device. Sessions and the audit log live in RAM and are not saved. The file holds key
material in hex: it is a test fixture, not a keystore.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "kms-yubihsm-simulator"
VERSION = 1


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when the file does not exist; ValueError if it is unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read simulator state {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"simulator state {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a YubiHSM simulator state file")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported state version {data.get('version')!r}")
    return data


def save_state(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``data`` (plus the format/version markers)."""
    document = {"format": FORMAT, "version": VERSION, **data}
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
