"""`tmkms yubihsm detect`, `tmkms yubihsm test KEY_ID` and `tmkms yubihsm simulator`."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from kms.commands import status_err, status_ok
from kms.commands.yubihsm.common import apply_verbose, hsm_connection, on_hsm, yubihsm_section
from kms.errors import KmsError, SignerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from yubihsm.core import AuthSession

#: What `test` signs: 128 zero bytes, about the size of a consensus message.
TEST_MESSAGE = bytes(128)
TEST_RETRY_PAUSE = 0.25


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
    from yubihsm.objects import AsymmetricKey

    from providers.yubihsm.signers import algorithm_of

    signing = algorithm_of(algorithm)
    if signing is None:
        raise SignerError(f"key 0x{key_id:04x} is neither an Ed25519 nor a secp256k1 key")
    hsm_sign = signing.sign

    def sign(session: AuthSession) -> bytes:
        return hsm_sign(AsymmetricKey(session, key_id), TEST_MESSAGE)

    return sign


def run_simulator(args: argparse.Namespace) -> int:
    """Run the YubiHSM 2 simulator until SIGINT/SIGTERM (see kms.sim.yubihsm)."""
    from kms.sim.yubihsm import main

    argv = ["--laddr", args.laddr, "--sign-delay-ms", str(args.sign_delay_ms)]
    if args.state:
        argv += ["--state", args.state]
    if args.serial is not None:
        argv += ["--serial", str(args.serial)]
    return main(argv)
