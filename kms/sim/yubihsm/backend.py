"""The simulator as an in-process ``yubihsm`` backend: ``YubiHsm(SimulatorBackend(device))``."""

from __future__ import annotations

from yubihsm.backends import YhsmBackend

from .device import YubiHsmDevice


class BackendClosedError(RuntimeError):
    """transceive() on a closed SimulatorBackend."""


class SimulatorBackend(YhsmBackend):
    """A ``yubihsm.backends.YhsmBackend`` that talks to an in-process simulated device.

    ``frames`` counts the frames exchanged (handy for asserting re-authentication).
    """

    def __init__(self, device: YubiHsmDevice) -> None:
        self.device = device
        self.closed = False
        self.frames = 0

    def transceive(self, msg: bytes) -> bytes:
        """Send one command frame to the device and return its response frame."""
        if self.closed:
            raise BackendClosedError("the simulator backend has been closed")
        self.frames += 1
        return self.device.transceive(bytes(msg))

    def close(self) -> None:
        """Mark the backend closed (the device itself keeps running)."""
        self.closed = True

    def __repr__(self) -> str:
        return f"SimulatorBackend(serial={self.device.serial})"
