"""Ed25519 signing through the real ``yubihsm`` library against the simulator.

Run from the repository root: ``python benchmarks/bench_yubihsm_sim.py [--quick]``.
Prints the median time of one SIGN_EDDSA per transport (in-process backend, HTTP
connector, fake USB), next to plain software Ed25519 as the floor the device cannot beat,
and the session set-up cost (PBKDF2 on both sides plus two round trips).
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ed25519
from yubihsm import YubiHsm
from yubihsm.defs import CAPABILITY
from yubihsm.objects import AsymmetricKey

from kms.sim.yubihsm import (
    ConnectorServer,
    SimulatorBackend,
    YubiHsmDevice,
    fake_usb_devices,
)

MESSAGE = bytes(range(120))  # about the size of canonical vote sign bytes
SEED = bytes(range(32))


def median_seconds(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean time of one call in a run of ``number``."""
    fn()
    return statistics.median(t / number for t in timeit.repeat(fn, number=number, repeat=repeat))


@contextmanager
def opened(transport: str, device: YubiHsmDevice) -> Iterator[YubiHsm]:
    """A YubiHsm on ``device`` through one transport."""
    with ExitStack() as stack:
        if transport == "backend":
            hsm = YubiHsm(SimulatorBackend(device))
        elif transport == "http":
            server = stack.enter_context(ConnectorServer(device))
            hsm = YubiHsm.connect(server.url)
        else:
            stack.enter_context(fake_usb_devices([device]))
            hsm = YubiHsm.connect("yhusb://")
        stack.callback(hsm.close)
        yield hsm


def measure(transport: str, number: int, repeat: int) -> tuple[float, float]:
    """(seconds per SIGN_EDDSA, seconds per session open + close) over ``transport``."""
    device = YubiHsmDevice()
    with opened(transport, device) as hsm:
        session = hsm.create_session_derived(1, "password")
        private = ed25519.Ed25519PrivateKey.from_private_bytes(SEED)
        key = AsymmetricKey.put(session, 1, "bench", 1, CAPABILITY.SIGN_EDDSA, private)
        sign = median_seconds(lambda: key.sign_eddsa(MESSAGE), number, repeat)
        login = median_seconds(lambda: hsm.create_session_derived(1, "password").close(), 5, 3)
    return sign, login


def main(argv: list[str]) -> int:
    """Print the measurements; ``--quick`` runs fewer iterations."""
    number, repeat = (20, 3) if "--quick" in argv else (200, 5)
    software = ed25519.Ed25519PrivateKey.from_private_bytes(SEED)
    floor = median_seconds(lambda: software.sign(MESSAGE), number, repeat)
    print(f"software Ed25519 sign          {floor * 1e6:9.1f} us")
    for transport in ("backend", "http", "usb"):
        sign, login = measure(transport, number, repeat)
        ratio = sign / floor
        print(
            f"{transport:8} SIGN_EDDSA            {sign * 1e6:9.1f} us  ({ratio:5.1f}x software)"
            f"   session open+close {login * 1e3:6.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
