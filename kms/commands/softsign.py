"""`tmkms softsign keygen|import`: create or convert software signing keys.

Both write one line of base64 (mode 0600) and, unlike tmkms, refuse to replace an existing
file unless ``--force``: overwriting a validator key cannot be undone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kms.commands import add_group, status_ok
from kms.keys import (
    generate_ed25519_seed,
    generate_secp256k1_scalar,
    read_priv_validator_key,
    write_base64_secret,
)

if TYPE_CHECKING:
    from kms.commands import Subparsers

import_log = logging.getLogger("kms.commands.softsign.import")
_ALGORITHM_NAMES = {"ed25519": "Ed25519", "secp256k1": "Secp256k1"}


def add_commands(subparsers: Subparsers) -> None:
    """Register `softsign keygen` and `softsign import`."""
    group = add_group(subparsers, "softsign", "subcommands for software signer")

    keygen = group.add_parser("keygen", help="generate a software signing key")
    keygen.add_argument(
        "-t",
        "--type",
        dest="key_type",
        choices=("consensus", "account"),
        default="consensus",
        help="consensus (Ed25519, default) or account (secp256k1)",
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    keygen.add_argument("path", metavar="PATH", help="where to write the key")
    keygen.set_defaults(handler=run_keygen)

    importer = group.add_parser(
        "import", help="convert a priv_validator_key.json to the softsign base64 format"
    )
    importer.add_argument(
        "-f", dest="format", choices=("json",), default="json", help="input format (json)"
    )
    importer.add_argument("--force", action="store_true", help="overwrite an existing file")
    importer.add_argument("input", metavar="INPUT", help="CometBFT priv_validator_key.json")
    importer.add_argument("output", metavar="OUTPUT", help="where to write the base64 key")
    importer.set_defaults(handler=run_import)


def run_keygen(args: argparse.Namespace) -> int:
    """Write a fresh key: Ed25519 seed (consensus) or secp256k1 scalar (account)."""
    path = Path(args.path)
    if args.key_type == "account":
        write_base64_secret(path, generate_secp256k1_scalar(), overwrite=args.force)
        status_ok("Generated", f"account (secp256k1) private key at: {path}")
    else:
        write_base64_secret(path, generate_ed25519_seed(), overwrite=args.force)
        status_ok("Generated", f"consensus (Ed25519) private key at: {path}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Check a priv_validator_key.json and write its 32-byte secret as base64."""
    output = Path(args.output)
    key = read_priv_validator_key(Path(args.input))
    write_base64_secret(output, key.secret, overwrite=args.force)
    import_log.info("Imported %s private key to %s", _ALGORITHM_NAMES[key.algorithm], output)
    return 0
