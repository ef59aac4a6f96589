"""A fake pyusb device so ``YubiHsm.connect("yhusb://")`` runs against the simulator.

``fake_usb_devices([...])`` replaces ``usb.core.find`` (the lowest layer the library's
UsbBackend touches) with a finder that yields :class:`FakeUsbDevice` objects. Each one
behaves like a YubiHSM 2 on the bus: vendor 0x1050, product 0x0030, configuration 1,
bulk OUT 0x01 / IN 0x81, one transfer per frame, and a zero-length packet expected
after a frame whose length is a multiple of 64 before the reply can be read.
"""

from __future__ import annotations

import array
import errno
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import usb.core

from .device import YubiHsmDevice

YUBICO_VID = 0x1050
YUBIHSM2_PID = 0x0030
CONFIGURATION = 1
EP_OUT = 0x01
EP_IN = 0x81
PACKET = 64


@dataclass(frozen=True)
class _Configuration:
    bConfigurationValue: int


class _Context:
    """Stands in for pyusb's resource manager (``usb.util.dispose_resources`` calls it)."""

    def __init__(self) -> None:
        self.disposed = 0

    def dispose(self, device: Any) -> None:
        self.disposed += 1


class FakeUsbDevice:
    """One simulated YubiHSM 2 as pyusb presents it."""

    idVendor = YUBICO_VID
    idProduct = YUBIHSM2_PID

    def __init__(self, device: YubiHsmDevice) -> None:
        self.device = device
        major, minor, patch = device.firmware
        self.bcdDevice = (major << 8) | (minor << 4) | patch
        self.serial_number = f"{device.serial:010d}"
        self._ctx = _Context()
        self.configuration: int | None = None
        self.connected = True
        self._incoming = bytearray()
        self._reply: bytes | None = None
        self._awaiting_zlp = False

    def unplug(self) -> None:
        """Simulate removal: every transfer fails with ENODEV until :meth:`replug`."""
        self.connected = False

    def replug(self) -> None:
        """Reconnect (unconfigured, pending data lost; RAM state of the HSM is lost too)."""
        self.connected = True
        self.configuration = None
        self._incoming.clear()
        self._reply = None
        self._awaiting_zlp = False
        self.device.power_cycle()

    def _check(self) -> None:
        if not self.connected:
            raise usb.core.USBError("No such device", errno=errno.ENODEV)

    def get_active_configuration(self) -> _Configuration:
        """The active configuration; USBError while the device is unconfigured."""
        self._check()
        if self.configuration is None:
            raise usb.core.USBError("Configuration not set", errno=errno.EIO)
        return _Configuration(self.configuration)

    def set_configuration(self, configuration: int | None = None) -> None:
        """Select a configuration (the HSM has only configuration 1)."""
        self._check()
        value = CONFIGURATION if configuration is None else configuration
        if value != CONFIGURATION:
            raise usb.core.USBError("Invalid configuration", errno=errno.EINVAL)
        self.configuration = value

    def write(self, endpoint: int, data: Any, timeout: int | None = None) -> int:
        """Bulk OUT transfer of (part of) a command frame; returns bytes written."""
        self._check()
        if endpoint != EP_OUT or self.configuration is None:
            raise usb.core.USBError("Pipe error", errno=errno.EPIPE)
        chunk = bytes(data)
        if not chunk:
            self._awaiting_zlp = False
            return 0
        self._incoming += chunk
        if len(self._incoming) >= 3:
            total = 3 + int.from_bytes(self._incoming[1:3], "big")
            if len(self._incoming) >= total:
                frame = bytes(self._incoming[:total])
                del self._incoming[:total]
                self._reply = self.device.transceive(frame)
                self._awaiting_zlp = total % PACKET == 0
        return len(chunk)

    def read(self, endpoint: int, size_or_buffer: Any, timeout: int | None = None) -> array.array:
        """Bulk IN transfer: the pending response frame, or a timeout if there is none."""
        self._check()
        if endpoint != EP_IN or self.configuration is None:
            raise usb.core.USBError("Pipe error", errno=errno.EPIPE)
        if self._reply is None or self._awaiting_zlp:
            raise usb.core.USBTimeoutError("Operation timed out", errno=errno.ETIMEDOUT)
        reply, self._reply = self._reply, None
        size = size_or_buffer if isinstance(size_or_buffer, int) else len(size_or_buffer)
        return array.array("B", reply[:size])

    @property
    def disposed(self) -> int:
        """How many times the library released this device's resources."""
        return self._ctx.disposed

    def __repr__(self) -> str:
        return f"FakeUsbDevice(serial={self.serial_number})"


def _finder(devices: list[FakeUsbDevice]) -> Any:
    def find(
        find_all: bool = False, backend: Any = None, custom_match: Any = None, **args: Any
    ) -> Any:
        def matches(dev: FakeUsbDevice) -> bool:
            fields_ok = all(getattr(dev, name, None) == value for name, value in args.items())
            return fields_ok and dev.connected and (custom_match is None or custom_match(dev))

        found = [dev for dev in devices if matches(dev)]
        if find_all:
            return iter(found)
        return found[0] if found else None

    return find


@contextmanager
def fake_usb_devices(
    devices: Iterable[YubiHsmDevice | FakeUsbDevice],
) -> Iterator[list[FakeUsbDevice]]:
    """Install fake YubiHSMs on the "USB bus" for the duration of the ``with`` block.

    Accepts simulator devices (wrapped automatically) or ready FakeUsbDevice objects and
    yields the FakeUsbDevice list (use it to ``unplug()`` / ``replug()``).
    """
    fakes = [d if isinstance(d, FakeUsbDevice) else FakeUsbDevice(d) for d in devices]
    original = usb.core.find
    usb.core.find = _finder(fakes)
    try:
        yield fakes
    finally:
        usb.core.find = original
