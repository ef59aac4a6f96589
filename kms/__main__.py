"""`python -m kms`: the same as the `tmkms` console script."""

from __future__ import annotations

from kms.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
