"""What the YubiHSM provider adds to each signature, over the simulated device's own time.

Run from the repository root: ``python benchmarks/bench_yubihsm.py [--quick]``.

For each transport (the in-process backend object, and HTTP through the yubihsm-connector
look-alike) three medians of one Ed25519 signature, measured in the same run:

- device: time spent inside the simulator's ``transceive`` for one SIGN_EDDSA (its own
  SCP03 decrypt/MAC work and the signature), i.e. what a device would take;
- library: one ``AsymmetricKey.sign_eddsa`` call of the ``yubihsm`` library on an open
  session (host-side SCP03, transport, device);
- provider: one ``await YubiHsmSigner.sign`` (Ed25519) from trio: a worker thread under the
  device's CapacityLimiter, the self-repairing connection, and the signature check.

``provider - library`` is the provider's own overhead; the ratios put it next to the device
time. With real hardware the device takes ~100 ms, which dwarfs every overhead here.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from yubihsm import YubiHsm
from yubihsm.backends import YhsmBackend
from yubihsm.backends.http import HttpBackend
from yubihsm.defs import CAPABILITY
from yubihsm.objects import AsymmetricKey

from kms.sim.yubihsm import ConnectorServer, SimulatorBackend, YubiHsmDevice
from providers.yubihsm import ED25519, HsmConnection, HsmDevice, YubiHsmSigner

MESSAGE = bytes(range(120))  # about the size of canonical vote sign bytes
SEED = bytes(range(32))
KEY_ID = 1


class TimedDevice:
    """Accumulates the time spent inside ``YubiHsmDevice.transceive``."""

    def __init__(self, device: YubiHsmDevice) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        self._inner = device.transceive
        device.transceive = self.transceive  # type: ignore[method-assign]

    def transceive(self, frame: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return self._inner(frame)
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds += elapsed
                self.calls += 1

    def reset(self) -> None:
        with self._lock:
            self.seconds, self.calls = 0.0, 0


@contextmanager
def transport(name: str, device: YubiHsmDevice) -> Iterator[Callable[[], YhsmBackend]]:
    """A backend factory for ``device`` over the named transport."""
    with ExitStack() as stack:
        if name == "backend":
            yield lambda: SimulatorBackend(device)
        else:
            server = stack.enter_context(ConnectorServer(device))
            yield lambda: HttpBackend(server.url, (5, 5))


def batches(run_batch: Callable[[int], float], number: int, repeat: int) -> float:
    """Median over ``repeat`` batches of the mean seconds per call in a batch of ``number``."""
    run_batch(max(1, number // 10))  # warm up
    return statistics.median(run_batch(number) / number for _ in range(repeat))


def measure(name: str, number: int, repeat: int) -> dict[str, float]:
    device = YubiHsmDevice()
    admin = YubiHsm(SimulatorBackend(device)).create_session_derived(1, "password")
    private = ed25519.Ed25519PrivateKey.from_private_bytes(SEED)
    AsymmetricKey.put(admin, KEY_ID, "bench", 1, CAPABILITY.SIGN_EDDSA, private)
    admin.close()
    public = private.public_key().public_bytes_raw()
    timed = TimedDevice(device)
    with transport(name, device) as open_backend:
        hsm = YubiHsm(open_backend())
        key = AsymmetricKey(hsm.create_session_derived(1, "password"), KEY_ID)
        device_times: list[float] = []

        def library_batch(n: int) -> float:
            timed.reset()
            started = time.perf_counter()
            for _ in range(n):
                key.sign_eddsa(MESSAGE)
            elapsed = time.perf_counter() - started
            device_times.append(timed.seconds / timed.calls)
            return elapsed

        library = batches(library_batch, number, repeat)
        device_seconds = statistics.median(device_times)
        hsm.close()

        connection = HsmConnection(open_backend, 1, "password")
        signer = YubiHsmSigner(HsmDevice(connection), KEY_ID, public, ED25519)

        def provider_batch(n: int) -> float:
            async def run() -> float:
                started = trio.current_time()
                for _ in range(n):
                    await signer.sign(MESSAGE)
                return trio.current_time() - started

            return trio.run(run)

        provider = batches(provider_batch, number, repeat)
        connection.close()
    return {"device": device_seconds, "library": library, "provider": provider}


def main(argv: list[str]) -> int:
    """Print the medians and ratios; ``--quick`` runs fewer iterations."""
    number, repeat = (30, 3) if "--quick" in argv else (300, 5)
    print(f"{'transport':9} {'device':>10} {'library':>10} {'provider':>10}  overhead  ratios")
    for name in ("backend", "http"):
        m = measure(name, number, repeat)
        overhead = m["provider"] - m["library"]
        print(
            f"{name:9} {m['device'] * 1e6:8.1f}us {m['library'] * 1e6:8.1f}us "
            f"{m['provider'] * 1e6:8.1f}us {overhead * 1e6:7.1f}us  "
            f"library/device {m['library'] / m['device']:4.1f}x  "
            f"provider/library {m['provider'] / m['library']:4.2f}x  "
            f"provider/device {m['provider'] / m['device']:4.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
