"""A chaos proxy: a flaky link between two peers (a node and the KMS, the KMS and etcd), for tests.

Theory of operation
-------------------
The KMS dials its node, so the proxy listens where the KMS dials (``listen()``) and opens a
connection to the node's real address (``upstream``) for every connection it accepts. Two
pumps then copy bytes, one per direction. Each chunk a pump reads is subjected to the
faults of a :class:`ChaosPolicy`, each drawn with its own probability:

* **delay**: sleep up to ``max_delay`` seconds before forwarding;
* **split**: write the chunk in several pieces cut at random byte boundaries, with a tiny
  pause between them so they travel as separate segments;
* **stall**: write a random prefix of the chunk (half a frame), then nothing for
  ``stall_time`` seconds, then the rest: long stalls trip the peers' timeouts mid-frame;
* **corrupt**: flip one random bit (Secret Connection must notice; plaintext framing may
  not, which is the point of testing it);
* **drop**: forward a random prefix, then close both sides (FIN), mid-frame;
* **reset**: forward a random prefix, then abort both sides with RST (SO_LINGER 0).

Every decision comes from a ``random.Random`` seeded with ``(seed, connection index,
direction)``, so a run replays the same fault schedule up to the ordering chosen by the
scheduler. Whatever happens to one connection, the proxy keeps accepting the next; it owns
no timeouts of its own beyond the sleeps it is told to inject. ``stats`` counts
connections, bytes and every fault injected, and ``active`` tells how many links are open
(a leak detector for the proxy itself).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from kms.transport.address import Address
from kms.transport.dial import open_connection

__all__ = ["ChaosPolicy", "ChaosProxy", "ChaosStats", "chaos_proxy"]

_RECEIVE_SIZE = 65536
_SPLIT_PAUSE = 0.0005


@attrs.frozen
class ChaosPolicy:
    """Per-chunk probabilities of each fault, and how long the timed faults last."""

    delay: float = 0.0
    max_delay: float = 0.02
    split: float = 0.0
    stall: float = 0.0
    stall_time: float = 0.5
    corrupt: float = 0.0
    drop: float = 0.0
    reset: float = 0.0

    def __attrs_post_init__(self) -> None:
        for name in ("delay", "split", "stall", "corrupt", "drop", "reset"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, got {value}")
        if self.max_delay < 0 or self.stall_time < 0:
            raise ValueError("max_delay and stall_time must not be negative")


#: A link that forwards faithfully.
CALM = ChaosPolicy()


@attrs.define
class ChaosStats:
    """What the proxy has done so far."""

    connections: int = 0
    upstream_failures: int = 0
    bytes_forwarded: int = 0
    faults: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def summary(self) -> str:
        """One line for test output and benchmark reports."""
        faults = " ".join(f"{name}={count}" for name, count in sorted(self.faults.items()))
        return (
            f"connections={self.connections} upstream_failures={self.upstream_failures} "
            f"bytes={self.bytes_forwarded} {faults}".rstrip()
        )


class _LinkClosed(Exception):
    """A fault ended the link (raised inside a pump to stop both directions)."""


@attrs.define(eq=False)
class _Link:
    downstream: trio.abc.Stream
    upstream: trio.abc.Stream
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def close(self, *, reset: bool) -> None:
        for stream in (self.downstream, self.upstream):
            if reset:
                _arm_reset(stream)
            await trio.aclose_forcefully(stream)


def _arm_reset(stream: trio.abc.Stream) -> None:
    """Make the coming close send RST instead of FIN (TCP only; unix sockets just close)."""
    sock = getattr(stream, "socket", None)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@attrs.define
class ChaosProxy:
    """Accepts connections, dials ``upstream`` for each, and forwards through the faults."""

    upstream: Address
    policy: ChaosPolicy = CALM
    seed: int = 0
    stats: ChaosStats = attrs.field(factory=ChaosStats)
    address: Address | None = None
    _listener: trio.SocketListener | None = None
    _links: set[_Link] = attrs.field(factory=set)

    @property
    def active(self) -> int:
        """How many proxied connections are open right now."""
        return len(self._links)

    async def listen(self, laddr: Address) -> Address:
        """Listen on ``laddr`` (tcp port 0 picks a free port); return the real address."""
        if laddr.scheme == "unix":
            assert laddr.path is not None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(laddr.path)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(laddr.path)
            sock.listen(64)
            self._listener = trio.SocketListener(sock)
            self.address = laddr
        else:
            listeners = await trio.open_tcp_listeners(laddr.port or 0, host=laddr.host)
            self._listener = listeners[0]
            for extra in listeners[1:]:
                await extra.aclose()
            host, port = self._listener.socket.getsockname()[:2]
            self.address = Address(scheme="tcp", host=host, port=port)
        return self.address

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and proxy connections until cancelled (call ``listen()`` first)."""
        assert self._listener is not None, "call listen() first"
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    downstream = await self._listener.accept()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                except OSError:  # e.g. EMFILE: keep accepting once descriptors free up
                    self.stats.faults["accept_error"] += 1
                    await trio.sleep(0.01)
                    continue
                index = self.stats.connections
                self.stats.connections += 1
                nursery.start_soon(self._proxy, downstream, index)

    def cut_all(self) -> int:
        """End every open link now (both sides see the connection close); returns how many."""
        for link in self._links:
            link.scope.cancel()
        return len(self._links)

    async def _proxy(self, downstream: trio.abc.Stream, index: int) -> None:
        try:
            upstream = await open_connection(self.upstream)
        except OSError:
            self.stats.upstream_failures += 1
            await trio.aclose_forcefully(downstream)
            return
        except BaseException:  # cancelled while dialling: do not leak the accepted socket
            await trio.aclose_forcefully(downstream)
            raise
        link = _Link(downstream, upstream)
        self._links.add(link)
        reset = False
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    for direction, src, dst in (
                        ("up", downstream, upstream),
                        ("down", upstream, downstream),
                    ):
                        rng = random.Random(f"{self.seed}:{index}:{direction}")
                        nursery.start_soon(self._pump, src, dst, rng, nursery.cancel_scope)
        except _LinkClosed as exc:
            reset = exc.args == ("reset",)
        except BaseExceptionGroup as group:
            closed, rest = group.split(_LinkClosed)
            if rest is not None:
                raise rest from None
            assert closed is not None
            reset = any(e.args == ("reset",) for e in closed.exceptions)
        finally:
            self._links.discard(link)
            with trio.CancelScope(shield=True):
                await link.close(reset=reset)

    async def _pump(
        self,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        rng: random.Random,
        link_scope: trio.CancelScope,
    ) -> None:
        """Copy ``src`` to ``dst`` through the faults; any end of either side ends the link."""
        try:
            while True:
                data = await src.receive_some(_RECEIVE_SIZE)
                if not data:
                    break
                await self._forward(bytes(data), dst, rng)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        link_scope.cancel()

    async def _forward(self, data: bytes, dst: trio.abc.Stream, rng: random.Random) -> None:
        policy, faults = self.policy, self.stats.faults
        for ending in ("reset", "drop"):
            if rng.random() < getattr(policy, ending):
                faults[ending] += 1
                cut = rng.randrange(len(data))
                if cut:
                    await self._write(dst, data[:cut])
                raise _LinkClosed(ending)
        if rng.random() < policy.corrupt:
            faults["corrupt"] += 1
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
        if rng.random() < policy.delay:
            faults["delay"] += 1
            await trio.sleep(rng.uniform(0, policy.max_delay))
        if len(data) > 1 and rng.random() < policy.stall:
            faults["stall"] += 1
            cut = rng.randrange(1, len(data))
            await self._write(dst, data[:cut])
            await trio.sleep(policy.stall_time)
            data = data[cut:]
        if len(data) > 1 and rng.random() < policy.split:
            faults["split"] += 1
            pieces = rng.randint(2, min(8, len(data)))
            cuts = sorted(rng.sample(range(1, len(data)), pieces - 1))
            start = 0
            for cut in [*cuts, len(data)]:
                await self._write(dst, data[start:cut])
                start = cut
                if cut != len(data):
                    await trio.sleep(_SPLIT_PAUSE)
            return
        await self._write(dst, data)

    async def _write(self, dst: trio.abc.Stream, data: bytes) -> None:
        await dst.send_all(data)
        self.stats.bytes_forwarded += len(data)

    async def aclose(self) -> None:
        """Stop listening and end every open link."""
        self.cut_all()
        if self._listener is not None:
            await self._listener.aclose()
        if self.address is not None and self.address.scheme == "unix" and self.address.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)


@asynccontextmanager
async def chaos_proxy(
    listen: Address, upstream: Address, policy: ChaosPolicy = CALM, seed: int = 0
) -> AsyncIterator[ChaosProxy]:
    """A serving ChaosProxy from ``listen`` to ``upstream``; closed (every link cut) on exit."""
    proxy = ChaosProxy(upstream=upstream, policy=policy, seed=seed)
    await proxy.listen(listen)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
            await proxy.aclose()
