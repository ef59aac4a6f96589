"""Parsing `[providers]`: `[[providers.softsign]]` and `[[providers.yubihsm]]`.

tmkms also has Ledger and Fortanix DSM providers and a built-in yubihsm-connector server;
their sections are recognised and rejected with a clear "not supported" error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kms.config.ids import chain_id_list
from kms.config.model import (
    DEFAULT_USB_TIMEOUT_MS,
    Pkcs11Config,
    Pkcs11KeyConfig,
    SoftsignConfig,
    YubihsmAdapter,
    YubihsmAuth,
    YubihsmConfig,
    YubihsmKeyConfig,
)
from kms.config.tables import Section, Table, describe
from kms.logs import register_secret
from kms.transport.address import parse_address

UNSUPPORTED_PROVIDERS = {
    "ledgertm": "the Ledger provider (ledgertm) is not supported by this KMS: keep the "
    "consensus key in an HSM ([[providers.yubihsm]] or [[providers.pkcs11]]) or in a key "
    "file ([[providers.softsign]])",
    "fortanixdsm": "the Fortanix DSM provider (fortanixdsm) is not supported by this KMS: "
    "reach the key through the vendor's PKCS#11 library with [[providers.pkcs11]], or use "
    "[[providers.yubihsm]] or [[providers.softsign]]",
}
_SERIAL = re.compile(r"^[0-9]{1,10}$")
_OBJECT_ID = {"low": 1, "high": 0xFFFF}


def choice(table: Table, key: str, options: tuple[str, ...], default: str | None) -> Any:
    """A string that must be one of ``options`` (``default`` when absent)."""
    value = table.string(key) if default is None else table.string(key, default)
    if value not in options:
        expected = ", ".join(f'"{o}"' for o in options)
        raise table.error(key, f"unknown value {describe(value)} (expected one of {expected})")
    return value


def parse_providers(
    raw: Any, file: Path, base: Path
) -> tuple[tuple[SoftsignConfig, ...], YubihsmConfig | None]:
    """Parse the `[providers]` table (``raw`` may be None when the file has none)."""
    if raw is None:
        return (), None
    providers = Table(raw, Section(file, "[providers]"))
    providers.allow(["softsign", "yubihsm", "pkcs11"], unsupported=UNSUPPORTED_PROVIDERS)
    softsign = tuple(
        _softsign(Table(item, Section(file, f"[[providers.softsign]] #{n}")), base)
        for n, item in enumerate(section_list(providers, "softsign", "providers.softsign"), 1)
    )
    yubihsm_items = section_list(providers, "yubihsm", "providers.yubihsm")
    if len(yubihsm_items) > 1:
        raise providers.error(
            "yubihsm",
            f"only one [[providers.yubihsm]] section is allowed, found {len(yubihsm_items)}",
        )
    yubihsm = None
    if yubihsm_items:
        yubihsm = _yubihsm(Table(yubihsm_items[0], Section(file, "[[providers.yubihsm]] #1")), base)
    return softsign, yubihsm


def section_list(parent: Table, key: str, header: str) -> list[dict[str, Any]]:
    """The tables of an array-of-tables key such as ``[[chain]]`` (absent -> empty)."""
    value = parent.data.get(key, [])
    if isinstance(value, dict):
        raise parent.error(key, f"expected an array of tables: write [[{header}]], not [{header}]")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise parent.error(key, f"expected an array of tables [[{header}]], got {describe(value)}")
    return value


def _softsign(table: Table, base: Path) -> SoftsignConfig:
    table.allow(["chain_ids", "key_type", "key_format", "path"])
    chain_ids = chain_id_list(table, "chain_ids")
    key_type = choice(table, "key_type", ("consensus", "account"), "consensus")
    key_format = choice(table, "key_format", ("base64", "json"), "base64")
    path = table.path("path", base)
    if key_type == "account" and key_format != "base64":
        raise table.error("key_format", 'account keys must use key_format = "base64"')
    return SoftsignConfig(chain_ids=chain_ids, key_type=key_type, key_format=key_format, path=path)


def _yubihsm(table: Table, base: Path) -> YubihsmConfig:
    table.allow(
        ["adapter", "auth", "keys", "serial_number"],
        unsupported={
            "connector_server": "the built-in yubihsm-connector server is not supported; "
            'run yubihsm-connector and use adapter = { type = "http", addr = ... }'
        },
    )
    adapter = _adapter(table.table("adapter"))
    auth = _auth(table.table("auth"), base)
    keys = tuple(_key(item) for item in table.table_list("keys"))
    serial = table.string("serial_number", None)
    if serial is not None and not _SERIAL.match(serial):
        raise table.error(
            "serial_number", f"expected up to 10 decimal digits, got {describe(serial)}"
        )
    return YubihsmConfig(adapter=adapter, auth=auth, keys=keys, serial_number=serial)


def _adapter(table: Table) -> YubihsmAdapter:
    kind = choice(table, "type", ("usb", "http"), None)
    table.allow(["type", "timeout_ms"] + (["addr"] if kind == "http" else []))
    timeout_ms = table.integer("timeout_ms", DEFAULT_USB_TIMEOUT_MS, low=1, high=600_000)
    if kind == "usb":
        return YubihsmAdapter(type="usb", addr=None, timeout_ms=timeout_ms)
    text = table.string("addr")
    url = text
    if text.startswith("http://"):
        text = "tcp://" + text[len("http://") :].rstrip("/")
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise table.error("addr", str(exc)) from exc
    if address.scheme != "tcp" or address.peer_id is not None:
        raise table.error(
            "addr", f"expected tcp://host:port of yubihsm-connector, got {describe(url)}"
        )
    host = f"[{address.host}]" if address.host and ":" in address.host else address.host
    return YubihsmAdapter(type="http", addr=f"http://{host}:{address.port}", timeout_ms=timeout_ms)


def _auth(table: Table, base: Path) -> YubihsmAuth:
    table.allow(["key", "password", "password_file"])
    key = table.integer("key", **_OBJECT_ID)
    password = table.string("password", None, nonempty=False)
    password_file = table.path("password_file", base, None)
    if password:
        register_secret(password)
    if (password is None) == (password_file is None):
        raise table.error(
            "password_file" if password is None else "password",
            "give exactly one of password or password_file",
        )
    return YubihsmAuth(key=key, password=password, password_file=password_file)


def _key(table: Table) -> YubihsmKeyConfig:
    table.allow(["chain_ids", "key", "type"])
    return YubihsmKeyConfig(
        chain_ids=chain_id_list(table, "chain_ids"),
        key=table.integer("key", **_OBJECT_ID),
        type=choice(table, "type", ("consensus", "account"), "consensus"),
    )


_PKCS11_LABEL_BYTES = 32  # CK_TOKEN_INFO.label
_SLOT_ID_MAX = 2**63 - 1


def parse_pkcs11(raw: Any, file: Path, base: Path) -> Pkcs11Config | None:
    """The `[[providers.pkcs11]]` section of the `[providers]` table ``raw``, if any."""
    if not isinstance(raw, dict):
        return None
    providers = Table(raw, Section(file, "[providers]"))
    items = section_list(providers, "pkcs11", "providers.pkcs11")
    if len(items) > 1:
        raise providers.error(
            "pkcs11", f"only one [[providers.pkcs11]] section is allowed, found {len(items)}"
        )
    if not items:
        return None
    return _pkcs11(Table(items[0], Section(file, "[[providers.pkcs11]] #1")), base)


def _pkcs11(table: Table, base: Path) -> Pkcs11Config:
    table.allow(["module", "token_label", "slot", "pin", "pin_file", "keys"])
    module = table.path("module", base)
    token_label = table.string("token_label", None)
    if token_label is not None and len(token_label.encode()) > _PKCS11_LABEL_BYTES:
        raise table.error("token_label", "a PKCS#11 token label has at most 32 bytes")
    slot = table.integer("slot", None, low=0, high=_SLOT_ID_MAX)
    if (token_label is None) == (slot is None):
        raise table.error(
            "token_label" if slot is None else "slot", "give exactly one of token_label or slot"
        )
    pin = _pkcs11_pin(table)
    pin_file = table.path("pin_file", base, None)
    if (pin is None) == (pin_file is None):
        raise table.error(
            "pin_file" if pin is None else "pin", "give exactly one of pin or pin_file"
        )
    keys = tuple(_pkcs11_key(item) for item in table.table_list("keys"))
    return Pkcs11Config(
        module=module, token_label=token_label, slot=slot, pin=pin, pin_file=pin_file, keys=keys
    )


def _pkcs11_pin(table: Table) -> str | None:
    """``pin``, checked without ever echoing its value."""
    if not table.has("pin"):
        return None
    value = table.data["pin"]
    if not isinstance(value, str) or not value:
        raise table.error("pin", f"expected a non-empty string, got {describe(value, secret=True)}")
    register_secret(value)
    return value


def _pkcs11_key(table: Table) -> Pkcs11KeyConfig:
    table.allow(["chain_ids", "label", "id", "type"])
    chain_ids = chain_id_list(table, "chain_ids")
    label = table.string("label", None)
    text = table.string("id", None)
    key_id = None
    if text is not None:
        digits = text.removeprefix("0x")
        if len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
            raise table.error(
                "id", f'expected the CKA_ID as hex digits such as "01", got {describe(text)}'
            )
        key_id = bytes.fromhex(digits)
    if label is None and key_id is None:
        raise table.error("label", "missing required key: give label or id (or both)")
    if choice(table, "type", ("consensus", "account"), "consensus") == "account":
        raise table.error(
            "type",
            "account keys are not supported by [[providers.pkcs11]]: keep the account key "
            "in [[providers.softsign]] or [[providers.yubihsm]]",
        )
    return Pkcs11KeyConfig(chain_ids=chain_ids, label=label, id=key_id)
