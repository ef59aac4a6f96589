"""`tmkms yubihsm ...`: detect, setup, keys, test, and the device simulator.

Every command that talks to the HSM reads the `[[providers.yubihsm]]` section of tmkms.toml
(``-c PATH``, else ``$TMKMS_CONFIG_FILE``, else ``./tmkms.toml``) for the adapter and the
credentials, as tmkms does. ``simulator`` serves a simulated YubiHSM 2 over the
yubihsm-connector HTTP API, for trying all of this without hardware.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from kms.commands import add_group, status_err, status_ok
from kms.commands.yubihsm_common import (
    add_config_option,
    add_verbose_option,
    apply_verbose,
    hsm_connection,
    on_hsm,
    yubihsm_section,
)
from kms.commands.yubihsm_keys import key_id_arg, run_export, run_generate, run_import, run_list
from kms.commands.yubihsm_setup import run_setup
from kms.errors import KmsError, SignerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from yubihsm.core import AuthSession

    from kms.commands import Subparsers

#: What `test` signs: 128 zero bytes, about the size of a consensus message.
TEST_MESSAGE = bytes(128)
TEST_RETRY_PAUSE = 0.25


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


def run_detect(args: argparse.Namespace) -> int:
    """List the YubiHSM 2 devices on the USB bus (serial, bus)."""
    apply_verbose(args)
    try:
        import usb.core
    except ImportError as exc:
        raise KmsError(f"couldn't detect USB devices: pyusb is not installed ({exc})") from exc
    try:
        found = list(usb.core.find(find_all=True, idVendor=0x1050, idProduct=0x0030) or [])
    except Exception as exc:  # NoBackendError, USBError: no libusb, no permission
        raise KmsError(f"couldn't detect USB devices: {exc}") from exc
    if not found:
        status_err("no YubiHSM2 devices detected!")
        return 1
    print("Detected YubiHSM2 USB devices:")
    for device in found:
        try:
            serial = int(device.serial_number)
        except (ValueError, TypeError, usb.core.USBError) as exc:
            serial_text = f"? ({exc})"
        else:
            serial_text = f"{serial:010d}"
        print(f"- Serial #{serial_text} (bus {getattr(device, 'bus', 0) or 0})")
    return 0


def run_test(args: argparse.Namespace) -> int:
    """Sign a test message again and again, printing how long each signature took."""
    from providers.yubihsm.signers import read_public_key

    apply_verbose(args)
    if args.count is not None and args.count < 1:
        raise KmsError("--count must be at least 1")
    key_id: int = args.key_id
    _, yubihsm = yubihsm_section(args)
    failures = 0
    with hsm_connection(yubihsm) as connection:
        algorithm, _ = on_hsm(
            connection,
            lambda s: read_public_key(s, key_id),
            f"couldn't get public key for key #{key_id}",
        )
        sign = _signing_operation(algorithm, key_id)
        done = 0
        while args.count is None or done < args.count:
            started = time.perf_counter()
            try:
                connection.execute(sign)
            except SignerError as exc:
                failures += 1
                status_err(f"signature operation failed: {exc}")
                time.sleep(TEST_RETRY_PAUSE)
            else:
                elapsed = (time.perf_counter() - started) * 1000
                status_ok("Success", f"signed message using key ID #{key_id} in {elapsed:.1f} ms")
            done += 1
    return 6 if failures else 0


def _signing_operation(algorithm: int, key_id: int) -> Callable[[AuthSession], bytes]:
    from cryptography.hazmat.primitives import hashes
    from yubihsm.defs import ALGORITHM
    from yubihsm.objects import AsymmetricKey

    if algorithm == ALGORITHM.EC_ED25519:

        def sign_eddsa(session: AuthSession) -> bytes:
            return bytes(AsymmetricKey(session, key_id).sign_eddsa(TEST_MESSAGE))

        return sign_eddsa
    if algorithm == ALGORITHM.EC_K256:

        def sign_ecdsa(session: AuthSession) -> bytes:
            return bytes(AsymmetricKey(session, key_id).sign_ecdsa(TEST_MESSAGE, hashes.SHA256()))

        return sign_ecdsa
    raise SignerError(f"key 0x{key_id:04x} is neither an Ed25519 nor a secp256k1 key")


def run_simulator(args: argparse.Namespace) -> int:
    """Run the YubiHSM 2 simulator until SIGINT/SIGTERM (see kms.testing.yubihsm)."""
    from kms.testing.yubihsm import main

    argv = ["--laddr", args.laddr, "--sign-delay-ms", str(args.sign_delay_ms)]
    if args.state:
        argv += ["--state", args.state]
    if args.serial is not None:
        argv += ["--serial", str(args.serial)]
    return main(argv)
