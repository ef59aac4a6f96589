"""`tmkms yubihsm keys generate|list|export|import`: signing keys inside the HSM.

Output follows tmkms: status lines such as ``Generated consensus (ed25519) key 0x0001: ...``
(on stderr, like every status line of this CLI), and ``keys list`` on stdout::

    Listing keys in YubiHSM #9876543210:
    - 0x0001: [cons] cosmosvalconspub1zcjduepq...
       label: "cosmosvalconspub:2024-05-01T12:00:00Z"

A key is shown with the ``key_format`` of its chain when tmkms.toml assigns it to exactly one
chain, otherwise as upper-case hex.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from kms.commands import status_err, status_ok
from kms.commands.yubihsm.common import (
    device_serial,
    hsm_connection,
    on_hsm,
    warn,
    yubihsm_section,
)
from kms.errors import ConfigError, KeyFileError, KmsError
from kms.keys import (
    amino_encode_public_key,
    bech32_encode,
    ed25519_key_from_bytes,
    format_public_key,
    read_base64_secret,
    read_priv_validator_key,
    write_base64_secret,
)

if TYPE_CHECKING:
    from kms.config import KeyFormat, KmsConfig, YubihsmConfig
    from providers.yubihsm import HsmConnection
    from providers.yubihsm.admin import KeyInfo

_ROLE_TAGS = {"consensus": "cons", "account": "acct"}


def key_id_arg(text: str) -> int:
    """argparse type for object IDs: decimal or ``0x`` hex, 1..65535."""
    from providers.yubihsm.admin import parse_object_id

    try:
        return parse_object_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_generate(args: argparse.Namespace) -> int:
    """Generate a key in the HSM; optionally write an encrypted backup of it."""
    from providers.yubihsm import admin

    key_id: int = args.key_id
    kind = args.key_type
    label = admin.check_label(args.label) if args.label else admin.default_label(kind, args.prefix)
    _, yubihsm = yubihsm_section(args)
    with hsm_connection(yubihsm) as connection:
        public_key = on_hsm(
            connection,
            lambda s: admin.generate_key(
                s, key_id, kind, label, exportable=not args.non_exportable
            ),
            f"couldn't generate key #{key_id}",
        )
        algorithm = "secp256k1" if kind == "account" else "ed25519"
        shown = _plain(algorithm, public_key, args.prefix)
        status_ok("Generated", f"{kind} ({algorithm}) key 0x{key_id:04x}: {shown}")
        if args.backup is not None:
            wrap_key = args.wrap_key if args.wrap_key is not None else admin.DEFAULT_WRAP_KEY
            blob = _export(connection, key_id, wrap_key)
            write_base64_secret(Path(args.backup), blob)
            status_ok(
                "Wrote",
                f"backup of key {key_id} (encrypted under wrap key {wrap_key}) to {args.backup}",
            )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List the asymmetric keys in the HSM with their public keys and labels."""
    from providers.yubihsm import admin

    config, yubihsm = yubihsm_section(args)
    formats = _key_formats(config, yubihsm)
    with hsm_connection(yubihsm) as connection:
        serial = device_serial(connection)
        keys = on_hsm(connection, admin.list_keys, "couldn't list YubiHSM objects")
    if not keys:
        status_err(f"no keys in this YubiHSM (#{serial})")
        return 0
    print(f"Listing keys in YubiHSM #{serial}:")
    for key in keys:
        print(_describe_key(key, formats.get(key.key_id)))
        if key.kind is not None:
            print(f'   label: "{key.label}"')
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a key wrapped under a wrap key, as one line of base64."""
    from providers.yubihsm import admin

    wrap_key = args.wrap_key if args.wrap_key is not None else admin.DEFAULT_WRAP_KEY
    _, yubihsm = yubihsm_section(args)
    with hsm_connection(yubihsm) as connection:
        blob = _export(connection, args.key_id, wrap_key)
    write_base64_secret(Path(args.path), blob)
    status_ok(
        "Exported",
        f"key 0x{args.key_id:04x} (encrypted under wrap key 0x{wrap_key:04x}) to {args.path}",
    )
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Import a wrapped backup, a priv_validator_key.json, or a base64 Ed25519 seed."""
    path = Path(args.path)
    kind = args.import_type
    if kind is None:
        kind = "json" if path.name == "priv_validator_key.json" else "wrap"
    _, yubihsm = yubihsm_section(args)
    if kind == "wrap":
        return _import_wrapped(args, path, yubihsm)
    if args.wrap_key is not None:
        warn(f"ignoring wrapkey ID: {args.wrap_key} (not applicable to {kind} keys)")
    if args.key_id is None:
        raise ConfigError(
            "no key ID specified (use e.g. tmkms yubihsm keys import -i 1 priv_validator_key.json)"
        )
    seed = _json_seed(path) if kind == "json" else _base64_seed(path)
    return _put_seed(args.key_id, args.label or "", seed, yubihsm)


def _import_wrapped(args: argparse.Namespace, path: Path, yubihsm: YubihsmConfig) -> int:
    from yubihsm.defs import OBJECT

    from providers.yubihsm import admin
    from providers.yubihsm.signers import read_public_key

    if args.key_id is not None:
        warn(f"ignoring key ID: {args.key_id} (wrapped keys use original key ID)")
    if args.label is not None:
        warn(f"ignoring label: {args.label!r} (wrapped keys use original label)")
    wrap_key = args.wrap_key if args.wrap_key is not None else admin.DEFAULT_WRAP_KEY
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"couldn't import file {path}: {exc}") from exc
    try:
        blob = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(
            f"couldn't decode Base64-encoded wrapped key from {path}: {exc}"
        ) from exc
    with hsm_connection(yubihsm) as connection:
        object_type, object_id = on_hsm(
            connection,
            lambda s: admin.import_wrapped(s, wrap_key, blob),
            f"error importing encrypted key from {path} (using wrapkey 0x{wrap_key:04x})",
        )
        if object_type != OBJECT.ASYMMETRIC_KEY:
            name = getattr(object_type, "name", str(object_type))
            status_ok("Imported", f"object 0x{object_id:04x} ({name})")
            return 0
        algorithm, raw = on_hsm(
            connection,
            lambda s: read_public_key(s, object_id),
            f"couldn't get public key for asymmetric key #{object_id}",
        )
    if admin.is_ed25519_public_key(algorithm, raw):
        shown = raw.hex().upper()
    else:
        info = admin.KeyInfo(object_id, algorithm, admin.raw_public_key(algorithm, raw, 0), "")
        shown = f"{info.algorithm_name}: {info.public_key.hex().upper()}"
    status_ok("Imported", f"key 0x{object_id:04x}: {shown}")
    return 0


def _json_seed(path: Path) -> bytes:
    key = read_priv_validator_key(path)
    if key.algorithm != "ed25519":
        raise KeyFileError(f"{path}: expected an Ed25519 validator key, found {key.algorithm}")
    return key.secret


def _base64_seed(path: Path) -> bytes:
    from kms.keys import ExpandedSigningKey

    signing_key = ed25519_key_from_bytes(read_base64_secret(path), path)
    if isinstance(signing_key, ExpandedSigningKey):
        raise KeyFileError(f"{path}: Ed25519 key must be provided as a 32-byte seed")
    return bytes(signing_key)


def _put_seed(key_id: int, label: str, seed: bytes, yubihsm: YubihsmConfig) -> int:
    from providers.yubihsm import admin

    admin.check_label(label)
    with hsm_connection(yubihsm) as connection:
        public_key = on_hsm(
            connection,
            lambda s: admin.put_ed25519_seed(s, key_id, label, seed),
            f"couldn't import key #{key_id}",
        )
    status_ok("Imported", f"key 0x{key_id:04x}: {public_key.hex().upper()}")
    return 0


def _export(connection: HsmConnection, key_id: int, wrap_key: int) -> bytes:
    from providers.yubihsm import admin

    return on_hsm(
        connection,
        lambda s: admin.export_wrapped(s, key_id, wrap_key),
        f"couldn't export key {key_id} under wrap key {wrap_key}",
    )


def _plain(algorithm: str, public_key: bytes, prefix: str | None) -> str:
    """Bech32 under ``prefix`` (Amino-prefixed key), else upper-case hex."""
    if prefix:
        try:
            return bech32_encode(prefix, amino_encode_public_key(algorithm, public_key))
        except ValueError as exc:
            raise KmsError(f"invalid bech32 prefix {prefix!r}: {exc}") from exc
    return public_key.hex().upper()


def _key_formats(config: KmsConfig, yubihsm: YubihsmConfig) -> dict[int, KeyFormat]:
    """Key ID -> the key_format of its chain, for keys configured for exactly one chain."""
    formats: dict[int, KeyFormat] = {}
    for key in yubihsm.keys:
        if len(key.chain_ids) != 1:
            continue
        try:
            chain = config.chain(key.chain_ids[0])
        except KeyError:
            continue
        if key.key in formats:
            raise ConfigError(f"duplicate YubiHSM config for key: 0x{key.key:04x}")
        formats[key.key] = chain.key_format
    return formats


def _describe_key(key: KeyInfo, key_format: KeyFormat | None) -> str:
    attr = f"- 0x{key.key_id:04x}:"
    if key.kind is None:
        return f"{attr} unsupported algorithm: {key.algorithm_name}"
    shown = key.public_key.hex().upper()
    if key_format is not None:
        # a bech32 format without a prefix for this kind of key falls back to hex
        with contextlib.suppress(ValueError):
            shown = format_public_key(key.kind, key.public_key, key_format, key.kind)
    return f"{attr} [{_ROLE_TAGS[key.kind]}] {shown}"
