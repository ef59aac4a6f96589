"""The `tmkms` command line: a thin argparse tree over :mod:`kms.commands`.

Commands are discovered from the modules of :mod:`kms.commands` (see its docstring for the
contract), so a new command group is a new module there. Failures never print tracebacks:
a :class:`~kms.errors.KmsError` becomes one ``error: ...`` line on stderr and an exit code:

=====  ============================================================================
code   meaning
=====  ============================================================================
0      success
1      configuration error (as tmkms), or any other failure
2      usage error (no command, unknown option), as argparse and tmkms's clap
3      key file missing, unreadable or invalid
4      double-sign state file problem
5      protocol or handshake failure
6      signing provider (softsign, YubiHSM) failure
7      signing refused (double-sign protection, max_height)
130    interrupted (Ctrl-C)
=====  ============================================================================

Codes 1 and 3 are worth ``RestartPreventExitStatus=1 3`` in a systemd unit: restarting does
not fix a broken config or key file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import kms.commands
from kms import __version__
from kms.commands import status_err
from kms.errors import (
    ConfigError,
    KeyFileError,
    KmsError,
    ProtocolError,
    SignerError,
    SigningRefused,
    StateError,
)
from kms.logs import setup_logging

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Most specific first: the first matching class decides.
EXIT_CODES: tuple[tuple[type[KmsError], int], ...] = (
    (ConfigError, 1),
    (KeyFileError, 3),
    (StateError, 4),
    (ProtocolError, 5),
    (SignerError, 6),
    (SigningRefused, 7),
    (KmsError, 1),
)


def exit_code_for(error: KmsError) -> int:
    """The process exit code for ``error`` (see the module docstring)."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return 1  # pragma: no cover - KmsError is the last row


def build_parser() -> argparse.ArgumentParser:
    """The full command tree, with every command module of :mod:`kms.commands` registered."""
    parser = argparse.ArgumentParser(
        prog="tmkms",
        description="Tendermint KMS: key management for CometBFT validators (trio edition).",
        epilog="Run `tmkms COMMAND --help` for a command's options.",
    )
    parser.add_argument("-V", "--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(kms.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"kms.commands.{info.name}")
        except Exception as exc:  # one broken plugin must not take down `tmkms start`
            _add_unavailable(subparsers, info.name, exc)
            continue
        add_commands = getattr(module, "add_commands", None)
        if add_commands is not None:
            add_commands(subparsers)
    return parser


def _add_unavailable(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, exc: Exception
) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    parser = subparsers.add_parser(name, help=f"(unavailable: {reason})")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        del args
        raise KmsError(f"the `{name}` commands are unavailable: {reason}")

    parser.set_defaults(handler=unavailable)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tmkms` command line; returns the exit code (the console script exits with it)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not arguments:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging()
        return int(handler(args))
    except KmsError as exc:
        status_err(_one_line(str(exc)))
        return exit_code_for(exc)
    except OSError as exc:
        status_err(_one_line(str(exc)))
        return 1
    except KeyboardInterrupt:
        status_err("interrupted")
        return EXIT_INTERRUPTED


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"
