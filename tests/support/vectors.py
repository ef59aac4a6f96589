"""CometBFT's golden vectors: where they live, loading one file, counting what was checked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

#: Vectors checked per file, printed in the terminal summary by tests/conftest.py.
VECTORS_CHECKED: dict[str, int] = {}


def vectors_dir() -> Path | None:
    """``$KMS_VECTORS_DIR``, else ``../shared/vectors`` beside the repository, else None."""
    env = os.environ.get("KMS_VECTORS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "vectors")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def load_vectors(name: str) -> Any:
    """Load one vector file, skipping the test with a clear reason when it is absent."""
    directory = vectors_dir()
    if directory is None or not (directory / name).is_file():
        pytest.skip(f"vector file {name} not found (set KMS_VECTORS_DIR or place ../shared)")
    return json.loads((directory / name).read_text())


def vector_checked(name: str, count: int = 1) -> None:
    """Record that ``count`` vectors of file ``name`` were checked (shown in the summary)."""
    VECTORS_CHECKED[name] = VECTORS_CHECKED.get(name, 0) + count
