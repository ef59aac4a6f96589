"""`tmkms pkcs11 keys list|generate|import`: Ed25519 keys on a PKCS#11 token.

Every command reads the `[[providers.pkcs11]]` section of tmkms.toml (``-c PATH``, else
``$TMKMS_CONFIG_FILE``, else ``./tmkms.toml``) for the module, the token and the PIN. Status
lines go to stderr, as for every command of this CLI; ``keys list`` prints to stdout::

    Listing keys on PKCS#11 token "kms" (slot 1):
    - "osmosis-consensus" (id 1a2b3c4d5e6f7081): [cons] osmovalconspub1zcjduepq...

A key is shown with the ``key_format`` of its chain when tmkms.toml assigns it to exactly one
chain, otherwise as upper-case hex. Keys are made sensitive and not extractable; an import
refuses a label that is already on the token. python-pkcs11 loads inside the handlers.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from kms.commands import add_config_option, add_group, status_err, status_ok
from kms.config import config_path_from, load_config
from kms.errors import ConfigError, KeyFileError, KmsError
from kms.keys import (
    amino_encode_public_key,
    bech32_encode,
    format_public_key,
    read_priv_validator_key,
)

if TYPE_CHECKING:
    from kms.commands import Subparsers
    from kms.config import KeyFormat, KmsConfig
    from kms.config.model import Pkcs11Config
    from providers.pkcs11.admin import KeyInfo


def add_commands(subparsers: Subparsers) -> None:
    """Register the `pkcs11` group."""
    group = add_group(subparsers, "pkcs11", "subcommands for PKCS#11 tokens (HSMs)")
    keys = add_group(group, "keys", "key management subcommands")

    listing = keys.add_parser("list", help="list the private keys on the token")
    add_config_option(listing)
    listing.set_defaults(handler=run_list)

    generate = keys.add_parser("generate", help="generate an Ed25519 consensus key in the token")
    add_config_option(generate)
    _add_key_options(generate)
    generate.add_argument(
        "-p", "--prefix", help="bech32 prefix to display the key with (default: hex)"
    )
    generate.set_defaults(handler=run_generate)

    importer = keys.add_parser(
        "import", help="import a CometBFT priv_validator_key.json into the token"
    )
    add_config_option(importer)
    importer.add_argument("path", metavar="PATH", help="the priv_validator_key.json to import")
    _add_key_options(importer)
    importer.set_defaults(handler=run_import)


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("label", metavar="LABEL", help="CKA_LABEL of the new key")
    parser.add_argument(
        "--id", dest="key_id", type=_hex_id, help="CKA_ID in hex (default: 8 random bytes)"
    )


def run_list(args: argparse.Namespace) -> int:
    """Print every private key on the token: label, ID, type and public key."""
    from providers.pkcs11.admin import admin_session, list_keys

    config, pkcs11 = _section(args)
    with admin_session(pkcs11) as session:
        token = f'"{session.token.label}" (slot {session.token.slot.slot_id})'
        keys = list_keys(session)
    if not keys:
        status_err(f"no private keys on PKCS#11 token {token}")
        return 0
    print(f"Listing keys on PKCS#11 token {token}:")
    for key in keys:
        print(f'- "{key.label}" (id {key.id.hex() or "none"}): {_describe(config, pkcs11, key)}')
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """Generate a sensitive, non-extractable Ed25519 key pair inside the token."""
    from providers.pkcs11.admin import admin_session, generate_ed25519

    _, pkcs11 = _section(args)
    with admin_session(pkcs11) as session:
        key = generate_ed25519(session, args.label, args.key_id)
    assert key.public_key is not None
    shown = key.public_key.hex().upper()
    if args.prefix:
        try:
            shown = bech32_encode(args.prefix, amino_encode_public_key("ed25519", key.public_key))
        except ValueError as exc:
            raise KmsError(f"invalid bech32 prefix {args.prefix!r}: {exc}") from exc
    status_ok("Generated", f'consensus (ed25519) key "{key.label}" (id {key.id.hex()}): {shown}')
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Import the Ed25519 seed of a priv_validator_key.json as a token key pair."""
    from providers.pkcs11.admin import admin_session, import_ed25519_seed

    path = Path(args.path)
    validator_key = read_priv_validator_key(path)
    if validator_key.algorithm != "ed25519":
        raise KeyFileError(f"{path}: expected an Ed25519 validator key, found secp256k1")
    _, pkcs11 = _section(args)
    with admin_session(pkcs11) as session:
        key = import_ed25519_seed(session, args.label, validator_key.secret, args.key_id)
    assert key.public_key is not None
    status_ok(
        "Imported",
        f'{path} as key "{key.label}" (id {key.id.hex()}): {key.public_key.hex().upper()}',
    )
    return 0


def _section(args: argparse.Namespace) -> tuple[KmsConfig, Pkcs11Config]:
    """The config file and its `[[providers.pkcs11]]` section; ConfigError if it has none."""
    config = load_config(config_path_from(args.config))
    if config.pkcs11 is None:
        raise ConfigError(
            f"{config.path}: expected one [[providers.pkcs11]] section in config, found: 0"
        )
    return config, config.pkcs11


def _hex_id(text: str) -> bytes:
    digits = text.removeprefix("0x")
    try:
        value = bytes.fromhex(digits)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected hex digits such as 01, got {text!r}") from exc
    if not value:
        raise argparse.ArgumentTypeError("the id must not be empty")
    return value


def _describe(config: KmsConfig, pkcs11: Pkcs11Config, key: KeyInfo) -> str:
    if key.type != "ed25519":
        return f"{key.type} (not usable as a consensus key)"
    if key.public_key is None:
        return "ed25519, no public-key object with the same label and id (not usable)"
    shown = key.public_key.hex().upper()
    key_format = _key_format(config, pkcs11, key)
    if key_format is not None:
        with contextlib.suppress(ValueError):  # a bech32 format without a consensus prefix
            shown = format_public_key("ed25519", key.public_key, key_format, "consensus")
    return f"[cons] {shown}"


def _key_format(config: KmsConfig, pkcs11: Pkcs11Config, key: KeyInfo) -> KeyFormat | None:
    """The key_format of the one chain tmkms.toml assigns this key to, if there is one."""
    for entry in pkcs11.keys:
        if entry.label not in (None, key.label) or entry.id not in (None, key.id):
            continue
        if len(entry.chain_ids) == 1:
            with contextlib.suppress(KeyError):
                return config.chain(entry.chain_ids[0]).key_format
    return None
