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


_VECTORS_CHECKED: dict[str, int] = {}


def vector_checked(name: str, count: int = 1) -> None:
    """Record that ``count`` vectors of file ``name`` were checked (shown in the summary)."""
    _VECTORS_CHECKED[name] = _VECTORS_CHECKED.get(name, 0) + count


_FAULT_COUNTS: dict[str, dict[str, int]] = {}


def fault_counted(scenario: str, **counts: int) -> None:
    """Add ``counts`` (requests, crashes, signatures, conflicts...) to a fault-suite scenario."""
    totals = _FAULT_COUNTS.setdefault(scenario, {})
    for key, value in counts.items():
        totals[key] = totals.get(key, 0) + value


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many golden vectors each file contributed, and the fault-suite counts."""
    if _VECTORS_CHECKED:
        terminalreporter.section("golden vectors checked")
        for name in sorted(_VECTORS_CHECKED):
            terminalreporter.write_line(f"{name}: {_VECTORS_CHECKED[name]}")
        terminalreporter.write_line(f"total: {sum(_VECTORS_CHECKED.values())}")
    if _FAULT_COUNTS:
        terminalreporter.section("fault suite")
        totals: dict[str, int] = {}
        for scenario in sorted(_FAULT_COUNTS):
            counts = _FAULT_COUNTS[scenario]
            shown = " ".join(f"{key}={value}" for key, value in sorted(counts.items()))
            terminalreporter.write_line(f"{scenario}: {shown}")
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        shown = " ".join(f"{key}={value}" for key, value in sorted(totals.items()))
        terminalreporter.write_line(f"total: {shown}")
