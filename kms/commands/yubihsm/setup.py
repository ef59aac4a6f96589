"""`tmkms yubihsm setup [-p] [-r] [-y] [-w REPORT]`: erase and provision a YubiHSM 2.

Prints the 24-word admin mnemonic and the derived passwords and wrap key exactly once (on
stdout, in tmkms's layout), asks for confirmation unless ``--yes``, then provisions the
device (see :mod:`providers.yubihsm.setup`). ``--print-only`` stops after printing;
``--restore`` reads an existing mnemonic from stdin instead of generating one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kms.commands import status_ok
from kms.commands.yubihsm.common import (
    CLI_IO_TIMEOUT,
    apply_verbose,
    device_serial,
    yubihsm_section,
)
from kms.errors import KmsError
from kms.logs import register_secret

if TYPE_CHECKING:
    from providers.yubihsm.setup import SetupPlan

MNEMONIC_PROMPT = "*** Enter mnemonic (separate words with spaces): "
CONFIRM_PROMPT = "Are you SURE you want erase and reinitialize this HSM?"


class SetupAborted(KmsError):
    """The operator did not confirm erasing the HSM."""


def run_setup(args: argparse.Namespace) -> int:
    """Derive (or restore) the admin mnemonic, print the secrets, and provision the HSM."""
    from providers.yubihsm import HsmConnection
    from providers.yubihsm.mnemonic import MnemonicError
    from providers.yubihsm.setup import SetupPlan, fresh_entropy, provision
    from providers.yubihsm.transport import backend_factory, expected_serial, read_password

    apply_verbose(args)
    _, yubihsm = yubihsm_section(args)
    timeout = max(CLI_IO_TIMEOUT, yubihsm.adapter.timeout_ms / 1000)
    open_backend = backend_factory(yubihsm.adapter, yubihsm.serial_number, timeout)
    admin = HsmConnection(
        open_backend,
        yubihsm.auth.key,
        read_password(yubihsm.auth),
        serial=expected_serial(yubihsm),
    )
    try:
        serial = device_serial(admin)
        if args.restore:
            print("Restoring and reprovisioning YubiHSM from existing 24-word mnemonic phrase.")
            print()
            print(MNEMONIC_PROMPT, end="", flush=True)
            try:
                plan = SetupPlan.from_phrase(sys.stdin.readline())
            except MnemonicError as exc:
                print(file=sys.stderr)
                raise KmsError(f"couldn't decode mnemonic: {exc}") from exc
            print()
            print("Mnemonic phrase decoded/checksummed successfully!")
            print()
        else:
            plan = SetupPlan.from_entropy(fresh_entropy(admin))
        _register(plan)
        _print_plan(plan, serial, print_only=args.print_only, restore=args.restore)
        if args.print_only:
            return 0
        if not args.yes:
            _confirm(CONFIRM_PROMPT)
        report = provision(open_backend, admin, plan)
    finally:
        admin.forget()
    status_ok("Success", f"reinitialized YubiHSM (serial: {serial})")
    if args.write_report is not None:
        status_ok("Writing", f"provisioning report to: {args.write_report}")
        try:
            Path(args.write_report).write_text(json.dumps(report) + "\n")
        except OSError as exc:
            raise KmsError(f"couldn't write report file {args.write_report}: {exc}") from exc
    return 0


def _print_plan(plan: SetupPlan, serial: int, *, print_only: bool, restore: bool) -> None:
    if print_only:
        if restore:
            print("Below are all keys/passwords derived from your 24-word admin mnemonic:")
        else:
            print(
                "Below is a randomly generated 24-word admin mnemonic and derived keys/passwords:"
            )
    else:
        print("This process will *ERASE* the configured YubiHSM2 and reinitialize it:")
        print()
        print(f"- YubiHSM serial: {serial}")
        print()
        print("Authentication keys with the following IDs and passwords will be created:")
    print()
    print("- key 0x0001: admin:")
    print()
    words = plan.phrase.split(" ")
    half = len(words) // 2
    print("    " + " ".join(words[:half]))
    print("    " + " ".join(words[half:]))
    print()
    for role in plan.roles[1:]:
        tag = f"[{role.name}]:"
        print(f"- authkey 0x{role.key_id:04x} {tag:<12} {role.password}")
    print(f"- wrapkey 0x0001 {'[primary]:':<12} {plan.wrap_key.hex()}", flush=True)


def _confirm(prompt: str) -> None:
    print(f"\n*** {prompt} (y/N): ", end="", flush=True)
    answer = sys.stdin.readline().strip()
    if answer not in ("y", "Y"):
        print("Aborting")
        raise SetupAborted("setup aborted: the HSM was not changed")


def _register(plan: SetupPlan) -> None:
    """Keep every derived secret out of log output."""
    register_secret(plan.phrase)
    register_secret(plan.wrap_key)
    for role in plan.roles:
        register_secret(role.password)
