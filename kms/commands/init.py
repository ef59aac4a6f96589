"""`tmkms init [-n NETWORKS] [--force] KMS_HOME`: lay out a new KMS home directory.

Creates ``KMS_HOME/{schema,secrets,state}`` (``secrets`` mode 0700), a fresh Secret
Connection identity key ``secrets/kms-identity.key`` (0600) and ``tmkms.toml`` from
:mod:`kms.config.template`. Unlike tmkms, existing files are never replaced without
``--force``: overwriting a configured KMS by accident is too easy otherwise.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kms.commands import status_ok
from kms.config import CONFIG_FILE_NAME
from kms.config.template import IDENTITY_KEY_NAME, NETWORKS, parse_networks, render_config
from kms.errors import KmsError
from kms.keys import generate_ed25519_seed, write_base64_secret

if TYPE_CHECKING:
    from kms.commands import Subparsers

SUBDIRECTORIES = ("schema", "secrets", "state")
SECRETS_DIR_MODE = 0o700
CONFIG_FILE_MODE = 0o600


def add_commands(subparsers: Subparsers) -> None:
    """Register `init`."""
    names = ", ".join(n.name for n in NETWORKS)
    parser = subparsers.add_parser(
        "init",
        help="initialize KMS configuration",
        description=f"Create a KMS home directory. Known networks: {names}.",
    )
    parser.add_argument(
        "-n",
        "--networks",
        metavar="NETWORKS",
        help="comma-separated networks (names or chain IDs) to configure (default: cosmoshub)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("kms_home", metavar="KMS_HOME", help="directory to create")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Create the directories, the identity key and tmkms.toml."""
    try:
        networks = parse_networks(args.networks)
    except ValueError as exc:
        raise KmsError(str(exc)) from exc
    home = Path(args.kms_home)
    if home.exists() and not home.is_dir():
        raise KmsError(f"{home}: exists and is not a directory")
    if not args.force:
        for existing in (home / CONFIG_FILE_NAME, home / "secrets" / IDENTITY_KEY_NAME):
            if existing.exists():
                raise KmsError(f"{existing}: already exists; refusing to overwrite (use --force)")
    if not home.exists():
        status_ok("Creating", str(home))
    try:
        home.mkdir(parents=True, exist_ok=True)
        home = home.resolve()
        for name in SUBDIRECTORIES:
            (home / name).mkdir(exist_ok=True)
        # secrets/ holds keys; state/ holds what stops a double sign: nobody else may
        # write (or, for secrets, read) either, whatever the umask.
        os.chmod(home / "secrets", SECRETS_DIR_MODE)
        os.chmod(home / "state", SECRETS_DIR_MODE)
    except OSError as exc:
        raise KmsError(f"{exc.filename or home}: cannot create: {exc.strerror or exc}") from exc

    config_path = home / CONFIG_FILE_NAME
    try:
        with open(config_path, "w" if args.force else "x", encoding="utf-8") as out:
            out.write(render_config(home, networks))
        # the config may later hold a YubiHSM password
        os.chmod(config_path, CONFIG_FILE_MODE)
    except OSError as exc:
        raise KmsError(f"{config_path}: cannot write: {exc.strerror or exc}") from exc
    status_ok("Generated", f"KMS configuration: {config_path}")

    identity = home / "secrets" / IDENTITY_KEY_NAME
    write_base64_secret(identity, generate_ed25519_seed(), overwrite=args.force)
    status_ok("Generated", f"Secret Connection key: {identity}")
    return 0
