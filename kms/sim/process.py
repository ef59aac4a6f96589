"""Stopping a child process the way an operator would: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import signal

import trio

__all__ = ["terminate"]


async def terminate(process: trio.Process, grace: float = 10.0) -> None:
    """Stop ``process`` (if it still runs): SIGTERM, up to ``grace`` seconds, then SIGKILL.

    Shielded: it runs in ``finally`` blocks of cancelled tasks too.
    """
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
