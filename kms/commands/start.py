"""`tmkms start [-c PATH] [-v] [--log-format text|json]`: load the config and serve."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kms.config import config_path_from, load_config
from kms.logs import setup_logging

if TYPE_CHECKING:
    from kms.commands import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register `start`."""
    parser = subparsers.add_parser("start", help="start the KMS application")
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="path to tmkms.toml (default: $TMKMS_CONFIG_FILE, else ./tmkms.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="enable debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format on stdout (default: text, as tmkms)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the configuration (ConfigError -> exit 1 before any key or socket) and serve."""
    setup_logging(verbose=args.verbose, fmt=args.log_format)
    config = load_config(config_path_from(args.config))
    from kms import service  # the trio service loads only for `start`

    return service.run(config, verbose=args.verbose)
