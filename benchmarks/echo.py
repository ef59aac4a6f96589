"""A trio echo server in its own process: the far end of the floor's loopback round trip.

``python -m benchmarks.echo`` prints its port on stdout, then echoes every connection
until it is killed. The KMS and the node are two processes, so a round trip between them
pays for waking the other process; an echo inside one process would not.
"""

from __future__ import annotations

import socket

import trio


async def _echo(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def _serve() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(_echo, listeners)


if __name__ == "__main__":
    trio.run(_serve)
