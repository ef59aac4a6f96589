"""The `tmkms` subcommands, one module per command or command group.

The contract (how `kms.cli` finds commands): every public module in this package that defines
``add_commands(subparsers)`` is imported when the command line is parsed, in alphabetical
order, and adds its parsers to ``subparsers``. Each leaf parser sets a handler with
``parser.set_defaults(handler=fn)`` where ``fn(args: argparse.Namespace) -> int`` returns the
exit code and raises :class:`kms.errors.KmsError` for failures (the CLI prints it as one
``error: ...`` line and maps its class to an exit code). Import heavy dependencies inside the
handler, so that `tmkms start` never pays for `tmkms yubihsm`. A new group (``state``, ...)
is a new module here, or a package when it has several modules (``yubihsm``: its
``__init__`` defines ``add_commands``, its other modules are not commands); nothing else
needs to change.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Handler: TypeAlias = Callable[[argparse.Namespace], int]

STATUS_WIDTH = 12


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config PATH``, as every tmkms command that reads tmkms.toml has it."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="path to tmkms.toml (default: $TMKMS_CONFIG_FILE, else ./tmkms.toml)",
    )


def status_ok(verb: str, message: str) -> None:
    """A cargo-style status line on stderr, e.g. ``   Generated KMS configuration: ...``."""
    print(f"{verb:>{STATUS_WIDTH}} {message}", file=sys.stderr)


def status_err(message: str) -> None:
    """An ``error: ...`` line on stderr, as tmkms prints failures."""
    print(f"error: {message}", file=sys.stderr)


def add_group(subparsers: Subparsers, name: str, help_text: str) -> Subparsers:
    """Add a command group (``tmkms <name> <command>``) and return its own subparsers.

    Running the group without a command prints the group's help and exits with status 2.
    """
    group = subparsers.add_parser(name, help=help_text, description=help_text)
    children = group.add_subparsers(title="commands", metavar="COMMAND")

    def show_help(args: argparse.Namespace) -> int:
        del args
        group.print_help(sys.stderr)
        return 2

    group.set_defaults(handler=show_help)
    return children
