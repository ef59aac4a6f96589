"""What the `tmkms yubihsm` commands share: the config section, the HSM session, output.

Kept free of heavy imports (the ``yubihsm`` library loads inside the functions), because
this package, and every module it imports, is loaded whenever the command line is parsed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from kms.config import KmsConfig, YubihsmConfig, config_path_from, load_config
from kms.errors import ConfigError, SignerError
from kms.logs import setup_logging

if TYPE_CHECKING:
    from yubihsm.core import AuthSession

    from providers.yubihsm import HsmConnection

T = TypeVar("T")

#: Seconds one HSM command may take from the CLI (reset and key generation are slow).
CLI_IO_TIMEOUT = 10.0


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose``: debug logging."""
    parser.add_argument("-v", "--verbose", action="store_true", help="enable debug logging")


def apply_verbose(args: argparse.Namespace) -> None:
    """Turn on debug logging when ``-v`` was given."""
    if getattr(args, "verbose", False):
        setup_logging(verbose=True)


def yubihsm_section(args: argparse.Namespace) -> tuple[KmsConfig, YubihsmConfig]:
    """The config file and its `[[providers.yubihsm]]` section; ConfigError if it has none."""
    config = load_config(config_path_from(args.config))
    if config.yubihsm is None:
        raise ConfigError(
            f"{config.path}: expected one [[providers.yubihsm]] section in config, found: 0"
        )
    return config, config.yubihsm


@contextmanager
def hsm_connection(yubihsm: YubihsmConfig) -> Iterator[HsmConnection]:
    """A connection with the configured credentials, closed (session and all) afterwards."""
    from providers.yubihsm import open_connection

    connection = open_connection(yubihsm, timeout=max(CLI_IO_TIMEOUT, _adapter_seconds(yubihsm)))
    try:
        yield connection
    finally:
        connection.close()


def on_hsm(connection: HsmConnection, operation: Callable[[AuthSession], T], failure: str) -> T:
    """Run ``operation`` on the HSM; a SignerError says what failed (``failure``) and why."""
    from providers.yubihsm import HsmUnavailable

    try:
        return connection.execute(operation)
    except HsmUnavailable as exc:
        raise SignerError(f"error connecting to YubiHSM2: {exc}") from exc
    except SignerError as exc:
        raise SignerError(f"{failure}: {exc}") from exc


def device_serial(connection: HsmConnection) -> int:
    """The serial number of the connected HSM (connecting first)."""
    from providers.yubihsm import HsmUnavailable

    try:
        connection.session()
    except HsmUnavailable as exc:
        raise SignerError(f"error connecting to YubiHSM2: {exc}") from exc
    assert connection.serial is not None, "set when the connection was made"
    return connection.serial


def warn(message: str) -> None:
    """A ``warning: ...`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def _adapter_seconds(yubihsm: YubihsmConfig) -> float:
    return yubihsm.adapter.timeout_ms / 1000
