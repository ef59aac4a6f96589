"""Shared fixtures: where the CometBFT golden vectors live."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


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
