"""systemd's readiness protocol (``Type=notify``), spoken directly over a unix socket.

systemd passes the path of a datagram socket in ``$NOTIFY_SOCKET`` (a leading ``@`` means
the Linux abstract namespace) and reads newline-separated ``KEY=VALUE`` assignments from
each datagram. The KMS sends ``READY=1`` once its keys and state files are loaded and every
validator task is running, ``STOPPING=1`` when a signal asks it to stop, and, when the unit
sets ``WatchdogSec=``, ``WATCHDOG=1`` every half period from the event loop, so a hung loop
gets the service restarted.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. A failure to send is
logged and otherwise ignored: a missing notification must never stop a validator signing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

__all__ = [
    "ReadyNotifier",
    "feed_watchdog",
    "notify",
    "notify_socket_address",
    "watchdog_interval",
]

log = logging.getLogger("kms.sdnotify")


def notify_socket_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The socket address from ``$NOTIFY_SOCKET`` (abstract names start with NUL), or None."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (e.g. ``"READY=1"``) in one datagram; True if it was sent.

    Returns False without sending when ``$NOTIFY_SOCKET`` is unset, or when sending fails
    (logged as a warning). The send never blocks: a full socket buffer is a failure.
    """
    address = notify_socket_address(environ)
    if address is None or not assignments:
        return False
    payload = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", assignments[0], exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None if unset.

    ``$WATCHDOG_PID``, when present, must be this process: the pings are for it alone.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


async def feed_watchdog(interval: float, environ: Mapping[str, str] | None = None) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds until cancelled."""
    while True:
        notify("WATCHDOG=1", environ=environ)
        await trio.sleep(interval)


class ReadyNotifier:
    """A ``task_status`` whose ``started()`` tells systemd the service is ready.

    Pass it as ``task_status`` to a task that calls ``task_status.started()`` once it is
    serving (``Service.serve`` does), so READY=1 goes out exactly then.
    """

    def __init__(self, status: str = "", environ: Mapping[str, str] | None = None) -> None:
        self._status = status
        self._environ = environ
        self.sent = False

    def started(self, value: None = None) -> None:
        """Send ``READY=1`` (and ``STATUS=...`` if one was given)."""
        del value
        assignments = ["READY=1"]
        if self._status:
            assignments.append(f"STATUS={self._status}")
        self.sent = notify(*assignments, environ=self._environ)
