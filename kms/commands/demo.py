"""`tmkms demo`: a self-contained run against the simulated node (see kms.testing.demo)."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

from kms.errors import KmsError

if TYPE_CHECKING:
    from kms.commands import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register `demo`."""
    parser = subparsers.add_parser(
        "demo", help="sign against a simulated CometBFT node, no setup needed"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Hand over to :func:`kms.testing.demo.main`."""
    del args
    try:
        demo = importlib.import_module("kms.testing.demo")
    except ImportError as exc:
        raise KmsError(f"the demo is not available in this installation: {exc}") from exc
    return int(demo.main())
