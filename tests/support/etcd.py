"""A real etcd cluster on 127.0.0.1 for the HA tests: start, break, heal, stop.

:class:`EtcdCluster` is :class:`kms.sim.etcd.LocalEtcd` (the members' command line, their
ports and data dirs under the test's temp folder, the start, the leader lookup, the kill)
with what the tests do to it besides: pause members (SIGSTOP), lose and regain the quorum,
restart a killed member, serve clients over TLS, read and write keys, turn auth on.

The helpers talk to etcd with the standard library's HTTP client (not the project's
client): they are the independent view the tests compare the project's client against.

Under ``CI=true`` a missing ``etcd`` binary fails the tests; elsewhere they are skipped,
saying why.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil  # noqa: F401  (tests/test_ha_wire.py hides etcd from find_etcd through it)
import signal
import ssl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from kms.chain.local import LocalStore
from kms.chain.state import SignState
from kms.chain.store import StateFile
from kms.sim.etcd import LocalEtcd, find_etcd, free_ports

__all__ = [  # free_ports too: the tests take it from here
    "ClusterTls",
    "EtcdCluster",
    "LocalFile",
    "b64",
    "etcd_binary",
    "free_ports",
    "healed",
    "module_cluster",
    "running_cluster",
]


def etcd_binary() -> str:
    """The etcd binary to run; skips (fails under ``CI=true``) when there is none."""
    path = find_etcd()
    if path is None and os.access("/usr/bin/etcd", os.X_OK):
        path = "/usr/bin/etcd"  # Debian's, when PATH does not lead to it
    if path is None:
        reason = "etcd binary not found (install Debian's etcd-server, or set ETCD_BINARY)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


@attrs.frozen
class ClusterTls:
    """Client-facing TLS of the members: their certificate and the CA of client certs."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients must present a certificate it signed
    ca_file: Path | None = None  # the CA the helpers trust for the members' certificate
    helper_cert: tuple[Path, Path] | None = None  # the helpers' client certificate and key

    def flags(self) -> list[str]:
        """The members' command-line flags for it."""
        flags = [f"--cert-file={self.cert_file}", f"--key-file={self.key_file}"]
        if self.client_ca_file is not None:
            flags += ["--client-cert-auth", f"--trusted-ca-file={self.client_ca_file}"]
        return flags


class EtcdCluster(LocalEtcd):
    """``size`` members on loopback, to be broken and healed; see the module docstring."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        tls: ClusterTls | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            etcd_binary(),
            base_dir,
            size,
            scheme="http" if tls is None else "https",
            extra_args=[*(tls.flags() if tls else ()), *extra_args],
        )
        self._tls = tls
        self._paused: set[int] = set()  # SIGSTOPped members

    def _connection(self, index: int, timeout: float) -> http.client.HTTPConnection:
        if self._tls is None:
            return super()._connection(index, timeout)
        context = ssl.create_default_context(
            cafile=str(self._tls.ca_file) if self._tls.ca_file else None
        )
        if self._tls.helper_cert is not None:
            context.load_cert_chain(*map(str, self._tls.helper_cert))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.members[index].client_port, timeout=timeout, context=context
        )

    def _serving(self, index: int) -> bool:
        return super()._serving(index) and index not in self._paused

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (paused or not) and reap it."""
        super().kill(index)
        self._paused.discard(index)

    def stop(self, index: int) -> None:
        """SIGSTOP member ``index`` (it keeps its sockets and answers nothing).

        Returns once every thread of the process is stopped: the signal is asynchronous,
        and a thread still running could answer one more request.
        """
        self._signal(index, signal.SIGSTOP)
        self._paused.add(index)
        proc = self.members[index].proc
        if proc is None:
            return
        deadline = time.monotonic() + 5.0
        while not _all_stopped(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)

    def cont(self, index: int) -> None:
        """SIGCONT member ``index``."""
        self._signal(index, signal.SIGCONT)
        self._paused.discard(index)

    def restart(self, index: int) -> None:
        """Start a killed member again on its data dir (rejoins with its old identity)."""
        member = self.members[index]
        if member.running:
            raise RuntimeError(f"{member.name} is still running")
        self._spawn(member, "existing")

    def lose_quorum(self, keep: int | None = None) -> list[int]:
        """SIGSTOP every member but ``keep`` (default: the first); return the stopped ones."""
        keep = 0 if keep is None else keep
        stopped = [i for i in range(len(self.members)) if i != keep]
        for index in stopped:
            self.stop(index)
        return stopped

    def regain_quorum(self) -> None:
        """SIGCONT every stopped member."""
        for index in sorted(self._paused):
            self.cont(index)

    def heal(self) -> None:
        """Undo a test's damage: continue stopped members, restart killed ones, wait."""
        self.regain_quorum()
        for index, member in enumerate(self.members):
            if not member.running:
                self.restart(index)
        self.wait_leader()

    def get_value(self, key: str, index: int | None = None) -> bytes | None:
        """The value under ``key`` (a linearizable read), or None."""
        target = index if index is not None else self.wait_leader()
        reply = self.post(target, "/v3/kv/range", {"key": b64(key)})
        kvs = reply.get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def put_value(self, key: str, value: bytes, index: int | None = None) -> None:
        """Store ``value`` under ``key`` unconditionally."""
        target = index if index is not None else self.wait_leader()
        self.post(target, "/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def enable_auth(self, user: str, password: str, prefix: str, root_password: str) -> None:
        """Add ``root`` and ``user`` (read/write on ``prefix`` only), then enable auth."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        steps: list[tuple[str, dict[str, Any]]] = [
            ("/v3/auth/user/add", {"name": "root", "password": root_password}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": "tmkms"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "tmkms",
                    "perm": {"permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)},
                },
            ),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/user/grant", {"user": user, "role": "tmkms"}),
            ("/v3/auth/enable", {}),
        ]
        for path, body in steps:
            reply = self.post(self.wait_leader(), path, body)
            if "error" in reply:
                raise RuntimeError(f"{path}: {reply['error']}")


def _all_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (``T`` in /proc)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
            if state not in (b"T", b"t"):
                return False
    except (OSError, IndexError):
        return True  # gone: nothing left to answer
    return True


def b64(text: str | bytes) -> str:
    """Base64 of ``text`` (UTF-8), as the JSON gateway wants keys and values."""
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


@contextlib.contextmanager
def running_cluster(base_dir: Path, size: int = 3, **options: Any) -> Iterator[EtcdCluster]:
    """A started cluster, killed on exit whatever happens."""
    with EtcdCluster(base_dir, size, **options) as cluster:
        cluster.start()
        yield cluster


def module_cluster(
    factory: pytest.TempPathFactory, size: int = 3, **options: Any
) -> Iterator[EtcdCluster]:
    """The body of a test module's ``etcd_cluster`` fixture (module scope)::

    @pytest.fixture(scope="module")
    def etcd_cluster(tmp_path_factory):
        yield from module_cluster(tmp_path_factory)
    """
    with running_cluster(factory.mktemp("etcd"), size, **options) as cluster:
        yield cluster


def healed(cluster: EtcdCluster) -> EtcdCluster:
    """The body of a test's ``etcd`` fixture: every member up, a leader (the last test's
    damage undone)."""
    cluster.heal()
    return cluster


class LocalFile:
    """A chain's local state: the project's LocalStore over a StateFile, counting saves."""

    def __init__(self, path: Path) -> None:
        self.file = StateFile(path)
        self._store = LocalStore(self.file, label=path.name)
        self.saves = 0

    def describe(self) -> str:
        return self._store.describe()

    async def load(self) -> SignState:
        return await self._store.load()

    async def save(self, state: SignState) -> None:
        await self._store.save(state)
        self.saves += 1
