"""Entry point: ``python -m kms.sim.yubihsm --laddr tcp://127.0.0.1:12345``."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
