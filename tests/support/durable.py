"""Fault shims for the sign path's durable-file seam (kms.chain.durable.DurableFile)."""

from __future__ import annotations

from pathlib import Path

from kms.chain.state import SignState
from kms.chain.store import StateFile


class ShimFile:
    """A DurableFile over a real state file that saves one by one (no group commit).

    Subclasses override :meth:`save` to fail, stall or cancel, then call ``super().save``.
    """

    def __init__(self, path: Path) -> None:
        self.file = StateFile(path)

    @property
    def path(self) -> Path:
        return self.file.path

    def load(self) -> SignState:
        return self.file.load()

    def remove_stale_temps(self) -> list[str]:
        return self.file.remove_stale_temps()

    def save(self, state: SignState) -> None:
        self.file.save(state)
