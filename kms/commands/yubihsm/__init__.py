"""`tmkms yubihsm ...`: detect, setup, keys, test, and the device simulator.

Every command that talks to the HSM reads the `[[providers.yubihsm]]` section of tmkms.toml
(``-c PATH``, else ``$TMKMS_CONFIG_FILE``, else ``./tmkms.toml``) for the adapter and the
credentials, as tmkms does. ``simulator`` serves a simulated YubiHSM 2 over the
yubihsm-connector HTTP API, for trying all of this without hardware.

This package's :func:`add_commands` is the command tree; the handlers live beside it:

* :mod:`.device` -- ``detect``, ``test`` and ``simulator``;
* :mod:`.setup` -- ``setup``;
* :mod:`.keys` -- ``keys generate|list|export|import``;
* :mod:`.common` -- what they share (the config section, the HSM session, output).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kms.commands import add_config_option, add_group
from kms.commands.yubihsm.common import add_verbose_option
from kms.commands.yubihsm.device import run_detect, run_simulator, run_test
from kms.commands.yubihsm.keys import key_id_arg, run_export, run_generate, run_import, run_list
from kms.commands.yubihsm.setup import run_setup

if TYPE_CHECKING:
    from kms.commands import Subparsers

__all__ = ["add_commands"]


def add_commands(subparsers: Subparsers) -> None:
    """Register the `yubihsm` group."""
    group = add_group(subparsers, "yubihsm", "subcommands for YubiHSM2")

    detect = group.add_parser("detect", help="detect all YubiHSM2 devices connected via USB")
    add_config_option(detect)
    add_verbose_option(detect)
    detect.set_defaults(handler=run_detect)

    setup = group.add_parser("setup", help="initial device setup and configuration")
    add_config_option(setup)
    add_verbose_option(setup)
    setup.add_argument(
        "-p", "--print-only", action="store_true", help="print derived keys only; do not erase"
    )
    setup.add_argument(
        "-r", "--restore", action="store_true", help="restore from an existing 24-word mnemonic"
    )
    setup.add_argument(
        "-w", "--write-report", metavar="PATH", help="write the provisioning report to PATH"
    )
    setup.add_argument("-y", "--yes", action="store_true", help="do not ask before erasing the HSM")
    setup.set_defaults(handler=run_setup)

    test = group.add_parser("test", help="perform a signing test")
    add_config_option(test)
    add_verbose_option(test)
    test.add_argument(
        "-n", "--count", type=int, metavar="N", help="stop after N signatures (default: forever)"
    )
    test.add_argument("key_id", metavar="KEY_ID", type=key_id_arg, help="signing key ID")
    test.set_defaults(handler=run_test)

    simulator = group.add_parser(
        "simulator", help="serve a simulated YubiHSM2 over the yubihsm-connector HTTP API"
    )
    simulator.add_argument("--laddr", default="tcp://127.0.0.1:12345", help="listen address")
    simulator.add_argument("--state", metavar="FILE", help="keep the device's objects in FILE")
    simulator.add_argument("--serial", type=int, help="device serial number")
    simulator.add_argument(
        "--sign-delay-ms", type=float, default=0.0, help="make each signature take this long"
    )
    simulator.set_defaults(handler=run_simulator)

    _add_keys_commands(add_group(group, "keys", "key management subcommands"))


def _add_keys_commands(keys: Subparsers) -> None:
    generate = keys.add_parser("generate", help="generate a signing key inside the HSM")
    add_config_option(generate)
    generate.add_argument("-l", "--label", help="label for the generated key (max 40 bytes)")
    generate.add_argument(
        "-p", "--prefix", help="bech32 prefix to display the key with (also sets the label)"
    )
    generate.add_argument(
        "-t",
        dest="key_type",
        choices=("consensus", "account"),
        default="consensus",
        help="consensus (Ed25519, default) or account (secp256k1)",
    )
    generate.add_argument(
        "--non-exportable", action="store_true", help="never allow exporting this key"
    )
    generate.add_argument("-b", "--backup", metavar="PATH", help="write an encrypted backup")
    generate.add_argument(
        "-w", "--wrapkey", dest="wrap_key", type=key_id_arg, help="wrap key for the backup"
    )
    generate.add_argument("key_id", metavar="KEY_ID", type=key_id_arg, help="key ID to generate")
    generate.set_defaults(handler=run_generate)

    listing = keys.add_parser("list", help="list all suitable keys in the HSM")
    add_config_option(listing)
    listing.set_defaults(handler=run_list)

    export = keys.add_parser("export", help="export an encrypted backup of a key")
    add_config_option(export)
    export.add_argument(
        "-i", "--id", dest="key_id", type=key_id_arg, required=True, help="key ID to export"
    )
    export.add_argument(
        "-w", "--wrapkey", dest="wrap_key", type=key_id_arg, help="wrap key (default 1)"
    )
    export.add_argument("path", metavar="PATH", help="where to write the backup")
    export.set_defaults(handler=run_export)

    importer = keys.add_parser("import", help="import a key (backup, JSON or base64)")
    add_config_option(importer)
    importer.add_argument(
        "-t",
        dest="import_type",
        choices=("wrap", "json", "base64"),
        help="input type (default: json for priv_validator_key.json, else wrap)",
    )
    importer.add_argument("-i", "--id", dest="key_id", type=key_id_arg, help="key ID to create")
    importer.add_argument(
        "-w", "--wrapkey", dest="wrap_key", type=key_id_arg, help="wrap key (default 1)"
    )
    importer.add_argument("-l", "--label", help="label for imported plaintext keys")
    importer.add_argument("path", metavar="PATH", help="the key to import")
    importer.set_defaults(handler=run_import)
