"""`tmkms start [-c PATH] [-v] [--log-format text|json] [--log-level L] [--metrics ADDR]`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import attrs

from kms.commands import add_config_option
from kms.config import KmsConfig, MetricsConfig, config_path_from, load_config
from kms.logs import setup_logging

if TYPE_CHECKING:
    from kms.commands import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register `start`."""
    parser = subparsers.add_parser("start", help="start the KMS application")
    add_config_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="enable debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format on stdout (default: text, as tmkms)",
    )
    parser.add_argument(
        "--log-level",
        choices=("trace", "debug", "info", "warn", "error"),
        help="lowest level logged (default: info, or debug with -v, or a bare level in $RUST_LOG)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ADDR",
        type=_metrics_laddr,
        help="serve Prometheus /metrics, /healthz and /readyz on ADDR (host:port); "
        "overrides [metrics] bind_address",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the configuration (ConfigError -> exit 1 before any key or socket) and serve."""
    setup_logging(verbose=args.verbose, fmt=args.log_format, level=args.log_level)
    path = config_path_from(args.config)

    def load() -> KmsConfig:  # at start, and again on SIGHUP
        config = load_config(path)
        if args.metrics is not None:
            config = attrs.evolve(config, metrics=MetricsConfig(laddr=args.metrics))
        return config

    config = load()
    from kms import service  # the trio service loads only for `start`

    return service.run(config, verbose=args.verbose, reread=load)


def _metrics_laddr(text: str) -> str:
    """argparse type of ``--metrics``: a host:port, checked now (a usage error if malformed)."""
    from kms.transport.address import parse_listen_address

    try:
        parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text
