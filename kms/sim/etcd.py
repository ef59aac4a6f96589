"""A throw-away etcd cluster on 127.0.0.1, for `tmkms demo --ha` and the benchmarks.

Each member is the installed ``etcd`` binary in its own process group (a signal to one
member reaches it and nothing else, and a Ctrl-C in the terminal does not), with free
loopback ports and its data dir under a folder the caller owns. Members keep etcd's real
durability (WAL fsync); only the raft timers are shortened, since loopback round trips are
tiny: a 50 ms heartbeat and a 500 ms election timeout let a new leader take over in about a
second; ``--pre-vote`` (etcd 3.5's default) keeps a member cut off from the others from
inflating the raft term, so a quorum that comes back resumes at once.
:meth:`LocalEtcd.close` SIGKILLs and reaps every member; use the cluster as a context
manager so that happens whatever goes wrong.

The calls block (process spawning, a standard-library HTTP probe of each member's status):
from trio, run :meth:`LocalEtcd.start` and :meth:`LocalEtcd.wait_leader` in a thread. The
test suite has its own, richer helper (``tests/support/etcd.py``: pausing members, quorum
loss, TLS, auth), which a product module may not import.
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
from pathlib import Path
from types import TracebackType

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
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

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

    def log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LocalEtcd:
    """``size`` members on loopback under ``base_dir`` (see the module docstring)."""

    def __init__(self, binary: str, base_dir: Path, size: int = 3) -> None:
        self.binary = binary
        self.base_dir = base_dir
        self._token = f"tmkms-{os.getpid()}-{time.monotonic_ns()}"
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], base_dir / f"m{i}")
            for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def _command(self, member: EtcdMember) -> list[str]:
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
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self._token}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--pre-vote",
            "--logger=zap",
            "--log-level=warn",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> int:
        """Start every member; return the leader's index once they all agree on one."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for member in self.members:
                with member.log_file.open("ab") as log:
                    member.proc = subprocess.Popen(
                        self._command(member),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group
                    )
            return self.wait_leader(timeout)
        except BaseException:
            self.close()
            raise

    def status(self, index: int) -> dict[str, object] | None:
        """Member ``index``'s ``/v3/maintenance/status``, or None if it does not answer."""
        member = self.members[index]
        if not member.running:
            return None
        conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=_PROBE_TIMEOUT)
        try:
            conn.request("POST", "/v3/maintenance/status", b"{}")
            reply = json.loads(conn.getresponse().read())
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()
        return reply if isinstance(reply, dict) and "header" in reply else None

    def leader(self) -> int | None:
        """The index of the member every answering member calls the leader, or None."""
        ids: dict[str, int] = {}
        leaders: set[object] = set()
        for index in range(len(self.members)):
            status = self.status(index)
            if status is None:
                continue
            header = status["header"]
            if isinstance(header, dict):
                ids[str(header.get("member_id"))] = index
            leaders.add(status.get("leader", "0"))
        if len(leaders) != 1:
            return None
        return ids.get(str(leaders.pop()))

    def wait_leader(self, timeout: float = 10.0) -> int:
        """Wait until every running member answers and they agree on a leader."""
        deadline = time.monotonic() + timeout
        while True:
            running = [i for i, m in enumerate(self.members) if m.running]
            answering = [i for i in running if self.status(i) is not None]
            leader = self.leader()
            if leader is not None and len(answering) == len(running):
                return leader
            for member in self.members:
                if member.proc is not None and member.proc.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"etcd {member.name} exited:\n{member.log_tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"{m.name}: {m.log_tail(3)}" for m in self.members)
                raise TimeoutError(f"the etcd cluster has no leader after {timeout:g} s\n{tails}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (its whole process group) and reap it."""
        member = self.members[index]
        if member.proc is None:
            return
        if member.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            member.proc.wait(timeout=10)

    def close(self) -> None:
        """SIGKILL and reap every member."""
        for index in range(len(self.members)):
            self.kill(index)

    def __enter__(self) -> LocalEtcd:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
