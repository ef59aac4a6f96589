"""Shared fixtures, and the summary of golden vectors checked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kms.ha.client import EtcdClient
from tests.support.etcd import EtcdCluster, healed, module_cluster
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


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster for the tests of one module (override to configure it)."""
    yield from module_cluster(tmp_path_factory)


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> EtcdCluster:
    """The module's cluster, every member running again (a test may have stopped some)."""
    return healed(etcd_cluster)


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    """An etcd client of ``etcd``, closed after the test."""
    async with EtcdClient(etcd.endpoints) as made:
        yield made


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many golden vectors each file contributed."""
    if VECTORS_CHECKED:
        terminalreporter.section("golden vectors checked")
        for name in sorted(VECTORS_CHECKED):
            terminalreporter.write_line(f"{name}: {VECTORS_CHECKED[name]}")
        terminalreporter.write_line(f"total: {sum(VECTORS_CHECKED.values())}")
