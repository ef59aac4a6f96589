"""`tmkms version`: print the version, alone on a line (as tmkms does)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kms import __version__

if TYPE_CHECKING:
    from kms.commands import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register `version`."""
    parser = subparsers.add_parser("version", help="display the version")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the version to stdout."""
    del args
    print(__version__)
    return 0
