"""Shared fixtures, and the summary of golden vectors checked."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.vectors import VECTORS_CHECKED


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """Put the root logger's handlers and level back (for tests that run the CLI in-process).

    Use with ``pytestmark = pytest.mark.usefixtures("restore_root_logger")``.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many golden vectors each file contributed."""
    if VECTORS_CHECKED:
        terminalreporter.section("golden vectors checked")
        for name in sorted(VECTORS_CHECKED):
            terminalreporter.write_line(f"{name}: {VECTORS_CHECKED[name]}")
        terminalreporter.write_line(f"total: {sum(VECTORS_CHECKED.values())}")
