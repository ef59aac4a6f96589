"""Loading a PKCS#11 module, finding its token, reading the PIN (all blocking).

Call these under :data:`providers.pkcs11.worker.PKCS11_LOCK`. Errors are one line each:

- the module file missing, or not a PKCS#11 library: ConfigError (the configuration names a
  wrong file; restarting does not help);
- the module failing to initialise, or no token matching the configuration: Pkcs11Unavailable
  (a network HSM's token may appear later);
- a PIN file missing, unreadable or empty: KeyFileError.

A module is loaded once per process (python-pkcs11 keeps it by path; the real path is used,
so two spellings of one library never initialise it twice).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pkcs11
from pkcs11.constants import TokenFlag
from pkcs11.exceptions import PKCS11Error

from kms.errors import ConfigError, KeyFileError
from kms.keys import warn_if_readable_by_others
from kms.logs import register_secret
from providers.pkcs11.errors import Pkcs11Unavailable, ckr_name

if TYPE_CHECKING:
    from pkcs11 import Token
    from pkcs11._pkcs11 import lib as Library

    from kms.config.model import Pkcs11Config

log = logging.getLogger("providers.pkcs11")


def load_module(path: Path) -> Library:
    """The loaded and initialised module at ``path`` (see the module docstring for errors)."""
    if not path.exists():
        raise ConfigError(f"PKCS#11 module {path}: no such file")
    if not path.is_file():
        raise ConfigError(f"PKCS#11 module {path}: not a file")
    real = os.path.realpath(path)
    try:
        return pkcs11.lib(real)
    except PKCS11Error as exc:
        text = str(exc)
        if text.startswith("OS exception while loading") or "C_GetFunctionList" in text:
            detail = text.split(": ", 1)[-1]
            raise ConfigError(f"PKCS#11 module {path} is not a PKCS#11 library: {detail}") from exc
        raise Pkcs11Unavailable(
            f"PKCS#11 module {path} failed to initialise: {ckr_name(exc)}"
        ) from exc


def restart_module(library: Library) -> None:
    """C_Finalize then C_Initialize: every session and object handle becomes invalid.

    SoftHSM notices a token directory that came back only this way.
    """
    try:
        library.finalize()
    except PKCS11Error as exc:
        log.debug("C_Finalize before re-initialising failed: %s", ckr_name(exc))
    library.initialize()


def find_token(library: Library, token_label: str | None, slot: int | None) -> Token:
    """The one initialised token with ``token_label`` (or in slot ``slot``)."""
    wanted = f'token "{token_label}"' if token_label is not None else f"slot {slot}"
    found: list[Token] = []
    seen: list[str] = []
    for each in library.get_slots(token_present=True):
        if slot is not None and each.slot_id != slot:
            continue
        try:
            token = each.get_token()
        except PKCS11Error as exc:
            seen.append(f"slot {each.slot_id}: {ckr_name(exc)}")
            continue
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            continue
        seen.append(f'"{token.label}" in slot {each.slot_id}')
        if token_label is None or token.label == token_label:
            found.append(token)
    if len(found) > 1:
        slots = ", ".join(str(t.slot.slot_id) for t in found)
        raise Pkcs11Unavailable(
            f"PKCS#11 {wanted}: {len(found)} tokens match (slots {slots}); "
            "configure slot = N instead"
        )
    if not found:
        present = "; ".join(seen) if seen else "none"
        raise Pkcs11Unavailable(
            f"PKCS#11 {wanted} not found in module {library.so} (initialised tokens: {present})"
        )
    return found[0]


def read_pin(config: Pkcs11Config) -> str:
    """The user PIN: ``pin``, or the text of ``pin_file`` without one trailing newline.

    The PIN is registered with the log redactor; no error message ever contains it.
    """
    if config.pin is not None:
        pin = config.pin
    else:
        path = config.pin_file
        if path is None:
            raise ConfigError("[[providers.pkcs11]]: no pin or pin_file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
            raise KeyFileError(f"{path}: cannot read PKCS#11 PIN file: {reason}") from exc
        warn_if_readable_by_others(Path(path), log)
        pin = text.removesuffix("\n").removesuffix("\r")
        if not pin:
            raise KeyFileError(f"{path}: PKCS#11 PIN file is empty")
    register_secret(pin)
    return pin
