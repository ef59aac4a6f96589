"""A throw-away etcd cluster on 127.0.0.1, for `tmkms demo --ha`, the benchmarks and the tests.

Each member is the installed ``etcd`` binary in its own process group (a signal to one
member reaches it and nothing else, and a Ctrl-C in the terminal does not), with free
loopback ports and its data dir under a folder the caller owns. Members keep etcd's real
durability (WAL fsync); only the raft timers are shortened, since loopback round trips are
tiny: a 50 ms heartbeat and a 500 ms election timeout let a new leader take over in about a
second instead of several. Members run with ``--pre-vote`` (etcd 3.5's default, and what an
HA deployment should use): a member cut off from the others does not inflate the raft term
while alone, so a quorum that comes back resumes in well under a second (measured in the
tests: 0.01-0.7 s, against 0.6-1.5 s, and 3.5 s once under load, without it).
:meth:`LocalEtcd.close` SIGKILLs and reaps every member; use the cluster as a context
manager so that happens whatever goes wrong.

The calls block (process spawning, a standard-library HTTP probe of each member's status):
from trio, run :meth:`LocalEtcd.start` and :meth:`LocalEtcd.wait_leader` in a thread. The
test suite's ``tests/support/etcd.py`` builds on this class (pausing members, quorum loss,
TLS, auth); a product module may not import it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs

__all__ = ["ELECTION_MS", "HEARTBEAT_MS", "EtcdMember", "LocalEtcd", "find_etcd", "free_ports"]

HEARTBEAT_MS = 50
ELECTION_MS = 500
START_TIMEOUT = 20.0
_PROBE_TIMEOUT = 0.3


def find_etcd() -> str | None:
    """The etcd binary: ``$ETCD_BINARY`` if set, else ``etcd`` on PATH; None if neither."""
    explicit = os.environ.get("ETCD_BINARY")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("etcd")


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


@attrs.define(eq=False)
class EtcdMember:
    """One etcd process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    scheme: str = "http"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client URL (``http://127.0.0.1:port``, or https)."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LocalEtcd:
    """``size`` members on loopback under ``base_dir`` (see the module docstring).

    ``extra_args`` go on every member's command line; with ``scheme="https"`` they must
    make the members serve clients over TLS, and a subclass's :meth:`_connection` must
    speak it.
    """

    def __init__(
        self,
        binary: str,
        base_dir: Path,
        size: int = 3,
        *,
        scheme: str = "http",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.base_dir = base_dir
        self._extra = list(extra_args)
        self._token = f"tmkms-{os.getpid()}-{time.monotonic_ns()}"
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], base_dir / f"m{i}", scheme)
            for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def _command(self, member: EtcdMember, state: str) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary,
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
            *self._extra,
        ]

    def _spawn(self, member: EtcdMember, state: str) -> None:
        """Start ``member``: ``state`` is ``new`` for a new cluster, ``existing`` to rejoin."""
        with member.log_file.open("ab") as log:
            member.proc = subprocess.Popen(
                self._command(member, state),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group
            )

    def start(self, timeout: float = START_TIMEOUT) -> int:
        """Start every member; return the leader's index once they all agree on one."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for member in self.members:
                self._spawn(member, "new")
            return self.wait_leader(timeout)
        except BaseException:
            self.close()
            raise

    def _connection(self, index: int, timeout: float) -> http.client.HTTPConnection:
        """An HTTP connection to member ``index``'s client port (not yet connected)."""
        return http.client.HTTPConnection(
            "127.0.0.1", self.members[index].client_port, timeout=timeout
        )

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
        conn = self._connection(index, timeout)
        try:
            conn.request("POST", path, json.dumps(body), headers or {})
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if not isinstance(data, dict):
            raise ValueError(f"unexpected reply {data!r}")
        return data

    def _serving(self, index: int) -> bool:
        """Whether member ``index`` is up and should answer."""
        return self.members[index].running

    def status(self, index: int, timeout: float = _PROBE_TIMEOUT) -> dict[str, Any] | None:
        """Member ``index``'s ``/v3/maintenance/status``, or None if it does not answer."""
        if not self._serving(index):
            return None
        try:
            reply = self.post(index, "/v3/maintenance/status", {}, timeout=timeout)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return reply if "header" in reply else None  # an error reply: not serving yet

    def leader(self) -> int | None:
        """The index of the member every answering member calls the leader, or None."""
        ids: dict[str, int] = {}
        leaders: set[str] = set()
        for index in range(len(self.members)):
            status = self.status(index)
            if status is None:
                continue
            ids[str(status["header"].get("member_id"))] = index
            leaders.add(str(status.get("leader", "0")))
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def wait_leader(self, timeout: float = 10.0) -> int:
        """Wait until every serving member answers and they agree on a leader among them."""
        deadline = time.monotonic() + timeout
        while True:
            serving = [i for i in range(len(self.members)) if self._serving(i)]
            answering = [i for i in serving if self.status(i) is not None]
            leader = self.leader()
            if leader is not None and len(answering) == len(serving):
                return leader
            for member in self.members:
                if member.proc is not None and member.proc.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"etcd {member.name} exited:\n{member.log_tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"{m.name}: {m.log_tail(5)}" for m in self.members)
                raise TimeoutError(f"the etcd cluster has no leader after {timeout:g} s\n{tails}")
            time.sleep(0.05)

    def _signal(self, index: int, signum: int) -> None:
        """Send ``signum`` to member ``index``'s process group, if it is running."""
        proc = self.members[index].proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (its whole process group) and reap it."""
        self._signal(index, signal.SIGKILL)
        proc = self.members[index].proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def close(self) -> None:
        """SIGKILL and reap every member."""
        for index in range(len(self.members)):
            self.kill(index)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
