"""Transport details: the connector HTTP API, the fake USB bus, and the simulator process."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import requests
import trio
import usb.core
from cryptography.hazmat.primitives.asymmetric import ed25519
from nacl.signing import SigningKey
from yubihsm import YubiHsm
from yubihsm.defs import ALGORITHM, CAPABILITY, ERROR
from yubihsm.exceptions import YubiHsmConnectionError, YubiHsmDeviceError
from yubihsm.objects import AsymmetricKey

from kms.sim.yubihsm import (
    ConnectorServer,
    FakeUsbDevice,
    SimulatorBackend,
    YubiHsmDevice,
    fake_usb_devices,
)
from kms.sim.yubihsm.backend import BackendClosedError
from kms.sim.yubihsm.cli import parse_laddr
from tests.support import REPO

T = TypeVar("T")


async def blocking(fn: Callable[[], T], seconds: float = 20) -> T:
    """Run blocking library code in a thread under a hard deadline."""
    with trio.fail_after(seconds):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


# -- HTTP connector --------------------------------------------------------------------


async def test_status_and_unknown_paths() -> None:
    with ConnectorServer(YubiHsmDevice()) as server:
        status = await blocking(lambda: requests.get(f"{server.url}/connector/status", timeout=5))
        assert status.status_code == 200
        fields = dict(line.split("=", 1) for line in status.text.strip().splitlines())
        assert fields["status"] == "OK" and fields["serial"] == "*"
        assert fields["version"].startswith("3.0.")
        assert fields["port"] == str(server.port) and fields["pid"] == str(os.getpid())
        missing = await blocking(lambda: requests.post(f"{server.url}/nope", b"x", timeout=5))
        assert missing.status_code == 404
        empty = await blocking(lambda: requests.post(f"{server.url}/connector/api", timeout=5))
        assert empty.status_code == 400


async def test_raw_frame_round_trip_over_http() -> None:
    with ConnectorServer(YubiHsmDevice()) as server:
        reply = await blocking(
            lambda: requests.post(
                f"{server.url}/connector/api",
                data=b"\x01\x00\x02hi",
                headers={"Content-Type": "application/octet-stream"},
                timeout=5,
            )
        )
        assert reply.headers["Content-Type"] == "application/octet-stream"
        assert reply.content == b"\x81\x00\x02hi"


async def test_connect_url_and_connection_loss() -> None:
    device = YubiHsmDevice(serial=31337)
    server = ConnectorServer(device).start()
    try:
        hsm = await blocking(lambda: YubiHsm.connect(server.url))
        assert (await blocking(hsm.get_device_info)).serial == 31337
        session = await blocking(lambda: hsm.create_session_derived(1, "password"))
        port = server.port
        server.stop()  # the connector goes away, keep-alive connections included
        with pytest.raises(YubiHsmConnectionError):
            await blocking(lambda: session.get_pseudo_random(4))
        server = ConnectorServer(device, port=port).start()
        # The device itself kept its RAM: the session is still there.
        assert len(await blocking(lambda: session.get_pseudo_random(4))) == 4
    finally:
        server.stop()


async def test_http_round_trips_are_not_delayed_by_nagle() -> None:
    device = YubiHsmDevice()
    with ConnectorServer(device) as server:

        def median_sign_seconds() -> float:
            hsm = YubiHsm.connect(server.url)
            session = hsm.create_session_derived(1, "password")
            key = AsymmetricKey.generate(
                session, 1, "", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519
            )
            times = []
            for _ in range(15):
                started = time.perf_counter()
                key.sign_eddsa(b"latency")
                times.append(time.perf_counter() - started)
            hsm.close()
            return statistics.median(times)

        # Nagle + delayed ACK would cost ~40 ms per request; a local round trip is ~1 ms.
        assert await blocking(median_sign_seconds) < 0.02


# -- fake USB --------------------------------------------------------------------------


async def test_usb_finds_devices_by_serial() -> None:
    first, second = YubiHsmDevice(serial=1), YubiHsmDevice(serial=2)
    with fake_usb_devices([first, second]) as (fake1, fake2):
        hsm = await blocking(lambda: YubiHsm.connect("yhusb://serial=2"))
        assert (await blocking(hsm.get_device_info)).serial == 2
        assert "serial=0000000002" in repr(hsm) and "version=2.3.1" in repr(hsm)
        default = await blocking(lambda: YubiHsm.connect("yhusb://"))
        assert (await blocking(default.get_device_info)).serial == 1
        await blocking(hsm.close)
        assert fake2.disposed >= 1
        with pytest.raises(YubiHsmConnectionError):
            await blocking(lambda: YubiHsm.connect("yhusb://serial=3"))
    with fake_usb_devices([]), pytest.raises(YubiHsmConnectionError):
        await blocking(lambda: YubiHsm.connect("yhusb://"))
    assert fake1.configuration == 1


async def test_usb_unplug_and_replug() -> None:
    device = YubiHsmDevice()
    with fake_usb_devices([device]) as (fake,):
        hsm = await blocking(lambda: YubiHsm.connect("yhusb://"))
        session = await blocking(lambda: hsm.create_session_derived(1, "password"))
        fake.unplug()
        with pytest.raises(YubiHsmConnectionError):
            await blocking(lambda: session.get_pseudo_random(1))
        fake.replug()  # a power cycle: sessions are gone, flash is not
        hsm = await blocking(lambda: YubiHsm.connect("yhusb://"))
        with pytest.raises(YubiHsmDeviceError) as err:
            # Same physical device (reconfigured by the new connection): the old session died.
            await blocking(lambda: session.get_pseudo_random(1))
        assert err.value.code == ERROR.INVALID_SESSION
        fresh = await blocking(lambda: hsm.create_session_derived(1, "password"))
        assert len(await blocking(lambda: fresh.get_pseudo_random(3))) == 3


def test_usb_reply_waits_for_the_zero_length_packet() -> None:
    fake = FakeUsbDevice(YubiHsmDevice())
    with pytest.raises(usb.core.USBError):
        fake.get_active_configuration()
    fake.set_configuration(1)
    frame = b"\x01\x00\x3d" + bytes(61)  # 64 bytes: a ZLP must follow
    assert fake.write(0x01, frame) == 64
    with pytest.raises(usb.core.USBTimeoutError):
        fake.read(0x81, 0xFFFF)
    assert fake.write(0x01, b"") == 0
    assert bytes(fake.read(0x81, 0xFFFF)) == b"\x81\x00\x3d" + bytes(61)
    with pytest.raises(usb.core.USBTimeoutError):
        fake.read(0x81, 0xFFFF)  # nothing pending: the backend's initial flush sees this
    assert fake.write(0x01, b"\x01\x00") == 2  # a frame split over two transfers
    assert fake.write(0x01, b"\x01z") == 2
    assert bytes(fake.read(0x81, 64)) == b"\x81\x00\x01z"
    with pytest.raises(usb.core.USBError):
        fake.write(0x02, b"x")


def test_backend_object_close() -> None:
    backend = SimulatorBackend(YubiHsmDevice())
    hsm = YubiHsm(backend)
    assert backend.frames == 1  # construction sent DEVICE_INFO
    hsm.close()
    assert backend.closed
    with pytest.raises(BackendClosedError):
        backend.transceive(b"\x01\x00\x00")


# -- the simulator as a process --------------------------------------------------------


def test_a_bad_laddr_names_the_option() -> None:
    """The parsing itself is kms.transport.address.parse_listen_url's (tested there)."""
    assert parse_laddr("tcp://[::1]:9") == ("::1", 9)
    with pytest.raises(
        ValueError, match=r"^invalid --laddr 'tcp://host': expected tcp://host:port$"
    ):
        parse_laddr("tcp://host")


class SimulatorProcess:
    """``python -m kms.sim.yubihsm`` as a child process."""

    def __init__(self, *args: str) -> None:
        self.args = [sys.executable, "-m", "kms.sim.yubihsm", *args]
        self.process: trio.Process | None = None
        self.url = ""

    async def start(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = await trio.lowlevel.open_process(
            self.args, stdout=subprocess.PIPE, cwd=REPO, env=env
        )
        assert self.process.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await self.process.stdout.receive_some(1)
                assert chunk, "simulator exited before printing its address"
                line += chunk
        match = re.search(r"listening on (http://\S+)", line.decode())
        assert match, line
        self.url = match.group(1)
        return self.url

    async def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        with trio.fail_after(20):
            return await self.process.wait()


async def test_process_keeps_keys_across_a_kill(tmp_path: Path) -> None:
    state = tmp_path / "hsm.json"
    args = ("--laddr", "tcp://127.0.0.1:0", "--state", str(state), "--serial", "555")
    seed = os.urandom(32)
    first = SimulatorProcess(*args)
    url = await first.start()

    def provision() -> tuple[int, bytes]:
        hsm = YubiHsm.connect(url)
        session = hsm.create_session_derived(1, "password")
        imported = AsymmetricKey.put(
            session,
            7,
            "validator",
            1,
            CAPABILITY.SIGN_EDDSA,
            ed25519.Ed25519PrivateKey.from_private_bytes(seed),
        )
        generated = AsymmetricKey.generate(
            session, 0, "gen", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519
        )
        assert imported.sign_eddsa(b"before") == SigningKey(seed).sign(b"before").signature
        pub = generated.get_public_key().public_bytes_raw()
        hsm.close()
        return generated.id, pub

    generated_id, generated_pub = await blocking(provision)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = SimulatorProcess("--laddr", "tcp://127.0.0.1:0", "--state", str(state))
    url = await second.start()

    def check() -> int:
        hsm = YubiHsm.connect(url)
        serial = hsm.get_device_info().serial
        session = hsm.create_session_derived(1, "password")
        key = AsymmetricKey(session, 7)
        assert key.sign_eddsa(b"after") == SigningKey(seed).sign(b"after").signature
        assert AsymmetricKey(session, generated_id).get_public_key().public_bytes_raw() == (
            generated_pub
        )
        hsm.close()
        return serial

    assert await blocking(check) == 555
    assert await second.stop(signal.SIGTERM) == 0


async def test_process_reports_bad_arguments() -> None:
    process = await trio.run_process(
        [sys.executable, "-m", "kms.sim.yubihsm", "--laddr", "nonsense"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_stderr=True,
        check=False,
    )
    assert process.returncode == 1
    assert b"laddr" in process.stderr
