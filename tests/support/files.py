"""Small file-system checks shared by the tests."""

from __future__ import annotations

import stat
from pathlib import Path


def mode(path: Path) -> int:
    """The permission bits of ``path`` (0o600, 0o700...)."""
    return stat.S_IMODE(path.stat().st_mode)
