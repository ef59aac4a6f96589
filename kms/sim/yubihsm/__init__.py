"""A YubiHSM 2 simulator that the real ``yubihsm`` library drives unmodified.

- :class:`YubiHsmDevice`: the device (``transceive(frame) -> frame``, thread-safe).
- :class:`SimulatorBackend`: ``yubihsm.YubiHsm(SimulatorBackend(device))`` in-process.
- :class:`ConnectorServer`: yubihsm-connector look-alike, ``YubiHsm.connect(server.url)``.
- :func:`fake_usb_devices`: fake pyusb bus, ``YubiHsm.connect("yhusb://")``.
- :class:`ManualClock`: an injectable clock to expire sessions in tests.
- ``python -m kms.sim.yubihsm`` / :func:`main`: run as a process (yubihsm-connector API).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .cli import main
from .connector import ConnectorServer
from .constants import DEFAULT_FIRMWARE, DEFAULT_PASSWORD, DEFAULT_SERIAL
from .device import YubiHsmDevice
from .sessions import ManualClock

if TYPE_CHECKING:
    from .backend import SimulatorBackend
    from .usb import FakeUsbDevice, fake_usb_devices

#: Names whose modules need the optional ``yubihsm`` / ``pyusb`` packages: imported lazily.
_LAZY = {
    "SimulatorBackend": "backend",
    "FakeUsbDevice": "usb",
    "fake_usb_devices": "usb",
}

__all__ = [
    "DEFAULT_FIRMWARE",
    "DEFAULT_PASSWORD",
    "DEFAULT_SERIAL",
    "ConnectorServer",
    "FakeUsbDevice",
    "ManualClock",
    "SimulatorBackend",
    "YubiHsmDevice",
    "fake_usb_devices",
    "main",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
