"""``python -m kms.sim.yubihsm``: serve a simulated YubiHSM 2 like yubihsm-connector."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from kms.transport.address import parse_listen_url

from .connector import ConnectorServer
from .device import YubiHsmDevice

DEFAULT_LADDR = "tcp://127.0.0.1:12345"


def parse_laddr(text: str) -> tuple[str, int]:
    """``--laddr`` (``tcp://host:port`` or ``http://host:port``; port 0: any) -> (host, port)."""
    try:
        return parse_listen_url(text)
    except ValueError as exc:
        raise ValueError(f"invalid --laddr {text!r}: expected tcp://host:port") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kms.sim.yubihsm",
        description="Serve a simulated YubiHSM 2 over the yubihsm-connector HTTP API.",
    )
    parser.add_argument("--laddr", default=DEFAULT_LADDR, help="listen address (port 0: any)")
    parser.add_argument("--serial", type=int, default=None, help="device serial number")
    parser.add_argument("--state", default=None, help="JSON file keeping objects across restarts")
    parser.add_argument(
        "--sign-delay-ms",
        type=float,
        default=0.0,
        help="make every signature take this long, like hardware (~100 ms)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; prints the listening URL first. Exit status."""
    args = _parser().parse_args(argv)
    try:
        host, port = parse_laddr(args.laddr)
        device = YubiHsmDevice(
            args.serial, state_path=args.state, sign_delay=args.sign_delay_ms / 1000
        )
        server = ConnectorServer(device, host, port).start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    print(f"yubihsm simulator serial {device.serial} listening on {server.url}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
