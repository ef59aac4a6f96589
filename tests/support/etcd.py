"""A real etcd cluster on 127.0.0.1 for the HA tests: start, break, heal, stop.

Each member is the distribution's ``etcd`` binary in its own process group (so a SIGKILL
or SIGSTOP reaches it and nothing else), with free loopback ports and a data dir under the
test's temp folder. Members keep etcd's real durability (WAL fsync); only the raft timers
are shortened, because loopback round trips are tiny: a 50 ms heartbeat and a 500 ms
election timeout let a new leader take over in about a second instead of several. Members
run with ``--pre-vote`` (etcd 3.5's default, and what an HA deployment should use): a
member cut off from the others does not inflate the raft term while alone, so a quorum that
comes back resumes in well under a second (measured here: 0.01-0.7 s, against 0.6-1.5 s,
and 3.5 s once under load, without it).

The helpers talk to etcd with the standard library's HTTP client (not the project's
client): they are the independent view the tests compare the project's client against.

Under ``CI=true`` a missing ``etcd`` binary fails the tests; elsewhere they are skipped,
saying why.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from kms.chain.local import LocalStore
from kms.chain.state import SignState
from kms.chain.store import StateFile

HEARTBEAT_MS = 50
ELECTION_MS = 500
START_TIMEOUT = 20.0
_PROBE_TIMEOUT = 0.3


def etcd_binary() -> str:
    """The etcd binary to run; skips (fails under ``CI=true``) when there is none."""
    path = os.environ.get("ETCD_BINARY") or shutil.which("etcd")
    if path is None and os.access("/usr/bin/etcd", os.X_OK):
        path = "/usr/bin/etcd"
    if path is None:
        reason = "etcd binary not found (install Debian's etcd-server, or set ETCD_BINARY)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@attrs.frozen
class ClusterTls:
    """Client-facing TLS of the members: their certificate and the CA of client certs."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients must present a certificate it signed
    ca_file: Path | None = None  # the CA the helpers trust for the members' certificate
    helper_cert: tuple[Path, Path] | None = None  # the helpers' client certificate and key


@attrs.define(eq=False)
class Member:
    """One etcd process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    scheme: str = "http"
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def endpoint(self) -> str:
        """The client URL (``http://127.0.0.1:port`` or https)."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        path = self.data_dir.parent / f"{self.name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class EtcdCluster:
    """``size`` members on loopback; see the module docstring."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        tls: ClusterTls | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._binary = etcd_binary()
        self._base = base_dir
        self._tls = tls
        self._extra = list(extra_args)
        self._token = f"tmkms-test-{os.getpid()}-{time.monotonic_ns()}"
        ports = free_ports(2 * size)
        scheme = "https" if tls else "http"
        self.members = [
            Member(f"m{i}", ports[2 * i], ports[2 * i + 1], base_dir / f"m{i}", scheme)
            for i in range(size)
        ]
        self.startup_seconds = 0.0

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def _command(self, member: Member, state: str) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [
            self._binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.endpoint}",
            f"--advertise-client-urls={member.endpoint}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={self._token}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--pre-vote",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self._tls is not None:
            command += [f"--cert-file={self._tls.cert_file}", f"--key-file={self._tls.key_file}"]
            if self._tls.client_ca_file is not None:
                command += [
                    "--client-cert-auth",
                    f"--trusted-ca-file={self._tls.client_ca_file}",
                ]
        return command + self._extra

    def _spawn(self, member: Member, state: str) -> None:
        log = (self._base / f"{member.name}.log").open("ab")
        with log:
            member.proc = subprocess.Popen(
                self._command(member, state),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach it alone
            )
        member.stopped = False

    def start(self) -> None:
        """Start every member and wait until they agree on a leader."""
        started = time.monotonic()
        self._base.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            self._spawn(member, "new")
        try:
            self.wait_leader(START_TIMEOUT)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - started

    def _signal(self, index: int, signum: int) -> None:
        member = self.members[index]
        if member.proc is not None and member.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.proc.pid, signum)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` and reap it."""
        member = self.members[index]
        self._signal(index, signal.SIGKILL)
        if member.proc is not None:
            member.proc.wait(timeout=10)
        member.stopped = False

    def stop(self, index: int) -> None:
        """SIGSTOP member ``index`` (it keeps its sockets and answers nothing).

        Returns once every thread of the process is stopped: the signal is asynchronous,
        and a thread still running could answer one more request.
        """
        self._signal(index, signal.SIGSTOP)
        self.members[index].stopped = True
        proc = self.members[index].proc
        if proc is None:
            return
        deadline = time.monotonic() + 5.0
        while not _all_stopped(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)

    def cont(self, index: int) -> None:
        """SIGCONT member ``index``."""
        self._signal(index, signal.SIGCONT)
        self.members[index].stopped = False

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
        for index, member in enumerate(self.members):
            if member.stopped:
                self.cont(index)

    def status(self, index: int, timeout: float = _PROBE_TIMEOUT) -> dict[str, Any] | None:
        """Member ``index``'s /v3/maintenance/status, or None if it does not answer."""
        member = self.members[index]
        if not member.running or member.stopped:
            return None
        try:
            reply = self.post(index, "/v3/maintenance/status", {}, timeout=timeout)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return reply if "header" in reply else None  # an error reply: not serving yet

    def leader(self) -> int | None:
        """Index of the member the answering members agree is the leader, or None."""
        ids: dict[str, int] = {}
        leaders = set()
        for index in range(len(self.members)):
            status = self.status(index)
            if status is None:
                continue
            ids[status["header"]["member_id"]] = index
            leaders.add(status.get("leader", "0"))
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        return ids.get(leader)

    def wait_leader(self, timeout: float = 10.0) -> int:
        """Wait until every running member answers and they agree on a leader among them."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.running and not m.stopped]
            answering = [i for i in range(len(self.members)) if self.status(i) is not None]
            leader = self.leader()
            if leader is not None and len(answering) == len(running):
                return leader
            for member in self.members:
                if member.proc is not None and member.proc.poll() not in (None, -9):
                    raise RuntimeError(f"etcd {member.name} exited:\n{member.log_tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"{m.name}: {m.log_tail(5)}" for m in self.members)
                raise TimeoutError(f"etcd cluster has no leader after {timeout} s\n{tails}")
            time.sleep(0.05)

    def heal(self) -> None:
        """Undo a test's damage: continue stopped members, restart killed ones, wait."""
        for index, member in enumerate(self.members):
            if member.stopped:
                self.cont(index)
            if not member.running:
                self.restart(index)
        self.wait_leader()

    def post(
        self,
        index: int,
        path: str,
        body: dict[str, Any],
        *,
        timeout: float = 2.0,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST JSON to member ``index`` with http.client; the decoded JSON reply."""
        member = self.members[index]
        if member.scheme == "https":
            assert self._tls is not None
            context = ssl.create_default_context(
                cafile=str(self._tls.ca_file) if self._tls.ca_file else None
            )
            if self._tls.helper_cert is not None:
                context.load_cert_chain(*map(str, self._tls.helper_cert))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", member.client_port, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), headers or {})
            reply = conn.getresponse()
            data = json.loads(reply.read())
        finally:
            conn.close()
        if not isinstance(data, dict):
            raise ValueError(f"unexpected reply {data!r}")
        return data

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

    def close(self) -> None:
        """SIGKILL every member (stopped ones too) and reap them."""
        for index, member in enumerate(self.members):
            self._signal(index, signal.SIGKILL)
            if member.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    member.proc.wait(timeout=10)


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
    cluster = EtcdCluster(base_dir, size, **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


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
