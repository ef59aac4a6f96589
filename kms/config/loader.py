"""Loading tmkms.toml strictly: every problem is one ConfigError line naming file, section, key.

Relative paths in the file (key files, state files, password files) are resolved against the
current working directory at load time, exactly the files tmkms would open (it passes them to
the OS unchanged); the default state file ``<chain_id>_priv_validator_state.json`` likewise.
Loading never touches key files, state files or sockets.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from kms.config.etcd import DEFAULT_TIMEOUT as DEFAULT_ETCD_TIMEOUT
from kms.config.etcd import MAX_TIMEOUT as MAX_ETCD_TIMEOUT
from kms.config.etcd import EtcdSettings
from kms.config.ids import chain_id
from kms.config.model import (
    DEFAULT_HOOK_TIMEOUT,
    DEFAULT_VALIDATOR_TIMEOUT,
    ChainConfig,
    KeyFormat,
    KmsConfig,
    MetricsConfig,
    Pkcs11Config,
    SoftsignConfig,
    StateHook,
    ValidatorConfig,
    YubihsmConfig,
)
from kms.config.providers import choice, parse_pkcs11, parse_providers, section_list
from kms.config.tables import Section, Table, describe, quote
from kms.errors import ConfigError
from kms.keys.bech32 import bech32_encode
from kms.protocol.version import ProtocolVersion
from kms.transport.address import parse_address, parse_listen_address

CONFIG_ENV_VAR = "TMKMS_CONFIG_FILE"
CONFIG_FILE_NAME = "tmkms.toml"
MAX_HEIGHT_LIMIT = 2**63 - 1

# Sections of tmkms (released, or in its pull requests) that this KMS refuses, and why.
UNSUPPORTED_SECTIONS = {
    "tx_signer": "tmkms's transaction signer ([[tx_signer]]) was removed in tmkms v0.13 and "
    "is not supported: remove the section and sign transactions with a separate tool",
    "http_server": "tmkms's HTTP API for adding chains at runtime (no authentication, open "
    "to any web page) is not supported: add the [[chain]], provider and [[validator]] "
    "sections to this file and reload (systemctl reload, or kill -HUP the tmkms process)",
    "prometheus": 'not supported: write [metrics] with bind_address = "host:port" instead',
}
# `protocol_version` values older tmkms releases accepted, and what to do instead.
OLD_PROTOCOL_VERSIONS = {
    "v0.33": "Tendermint v0.33 speaks an older privval protocol that this KMS does not "
    "implement (tmkms dropped it in v0.15): upgrade the node to v0.34 or newer, or keep "
    "tmkms v0.14 for it",
    "legacy": "the legacy (Tendermint v0.32 and older) privval protocol is not supported "
    "(tmkms dropped it in v0.13): upgrade the node to v0.34 or newer",
}


def config_path_from(arg: str | None) -> Path:
    """The config file to use: ``-c`` if given, else ``$TMKMS_CONFIG_FILE``, else ./tmkms.toml."""
    if arg:
        return Path(arg)
    env = os.environ.get(CONFIG_ENV_VAR)
    return Path(env) if env else Path(CONFIG_FILE_NAME)


def load_config(path: Path) -> KmsConfig:
    """Read and validate a tmkms.toml; ConfigError (one line) on any problem."""
    file = Path.cwd() / Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: config file is not UTF-8 text") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    return config_from_dict(doc, file, Path.cwd())


def config_from_dict(doc: dict[str, Any], file: Path, base: Path) -> KmsConfig:
    """Validate an already-parsed TOML document; relative paths are joined to ``base``."""
    top = Table(doc, Section(file, "top level"))
    top.allow(
        ["chain", "providers", "validator", "metrics", "etcd"], unsupported=UNSUPPORTED_SECTIONS
    )
    chains = _chains(section_list(top, "chain", "chain"), file, base)
    providers_raw = doc.get("providers")
    if providers_raw is not None and not isinstance(providers_raw, dict):
        raise top.error("providers", f"expected a table [providers], got {describe(providers_raw)}")
    softsign, yubihsm = parse_providers(providers_raw, file, base)
    pkcs11 = parse_pkcs11(providers_raw, file, base)
    consensus = _check_key_owners(chains, softsign, yubihsm, file, pkcs11)
    validators = tuple(
        _validator(
            Table(raw, _labelled(file, "validator", n, raw, "chain_id")), chains, consensus, base
        )
        for n, raw in enumerate(section_list(top, "validator", "validator"), 1)
    )
    metrics = None
    if "metrics" in doc:
        metrics = _metrics(doc["metrics"], top, file)
    etcd = None
    if "etcd" in doc:
        etcd = _etcd(doc["etcd"], top, file, base)
    return KmsConfig(
        path=file,
        chains=tuple(chains.values()),
        softsign=softsign,
        yubihsm=yubihsm,
        validators=validators,
        metrics=metrics,
        pkcs11=pkcs11,
        etcd=etcd,
    )


def _labelled(file: Path, header: str, number: int, raw: dict[str, Any], key: str) -> Section:
    label = f"[[{header}]] #{number}"
    if isinstance(raw.get(key), str):
        label += f" ({key} = {quote(raw[key])})"
    return Section(file, label)


def _chains(items: list[dict[str, Any]], file: Path, base: Path) -> dict[str, ChainConfig]:
    chains: dict[str, ChainConfig] = {}
    numbers: dict[str, int] = {}
    for number, raw in enumerate(items, 1):
        table = Table(raw, _labelled(file, "chain", number, raw, "id"))
        table.allow(["id", "key_format", "state_file", "sign_extensions", "state_hook"])
        cid = chain_id(table, "id")
        if cid in chains:
            raise table.error(
                "id", f"duplicate chain id {quote(cid)} (also in [[chain]] #{numbers[cid]})"
            )
        key_format = _key_format(table.table("key_format"))
        state_file = table.path("state_file", base, None) or (
            base / f"{cid}_priv_validator_state.json"
        )
        # one state per file: two chains writing one file would erase each other's state
        owner = next((c for c in chains.values() if _same_file(c.state_file, state_file)), None)
        if owner is not None:
            raise table.error(
                "state_file",
                f"{quote(str(state_file))} is already the state file of chain "
                f"{quote(owner.id)} ([[chain]] #{numbers[owner.id]})",
            )
        hook = table.table("state_hook", None)
        chains[cid] = ChainConfig(
            id=cid,
            key_format=key_format,
            state_file=state_file,
            sign_extensions=table.boolean("sign_extensions", None),
            state_hook=_state_hook(hook) if hook is not None else None,
        )
        numbers[cid] = number
    return chains


def _same_file(a: Path, b: Path) -> bool:
    """Whether two state file paths name one file (through symlinks too)."""
    return os.path.realpath(a) == os.path.realpath(b)


def _key_format(table: Table) -> KeyFormat:
    kind = choice(table, "type", ("bech32", "hex", "cosmos-json"), None)
    if kind != "bech32":
        table.allow(["type"])
        return KeyFormat(type=kind)
    table.allow(["type", "account_key_prefix", "consensus_key_prefix"])
    prefixes = []
    for key in ("account_key_prefix", "consensus_key_prefix"):
        prefix = table.string(key)
        try:
            bech32_encode(prefix, b"")
        except ValueError as exc:
            raise table.error(key, str(exc)) from exc
        prefixes.append(prefix)
    return KeyFormat(
        type="bech32", account_key_prefix=prefixes[0], consensus_key_prefix=prefixes[1]
    )


def _state_hook(table: Table) -> StateHook:
    table.allow(["cmd", "timeout_secs", "fail_closed"])
    return StateHook(
        cmd=table.string_list("cmd"),
        timeout_secs=table.seconds("timeout_secs", DEFAULT_HOOK_TIMEOUT, high=3600),
        fail_closed=table.boolean("fail_closed", False),
    )


def _check_key_owners(
    chains: dict[str, ChainConfig],
    softsign: tuple[SoftsignConfig, ...],
    yubihsm: YubihsmConfig | None,
    file: Path,
    pkcs11: Pkcs11Config | None = None,
) -> dict[str, str]:
    """Keys must name known chains, one consensus and one account key per chain at most.

    Returns chain ID -> the section that holds its consensus key.
    """
    owners: dict[tuple[str, str], str] = {}
    entries: list[tuple[str, str, str, tuple[str, ...]]] = [
        (f"[[providers.softsign]] #{n}", "chain_ids", s.key_type, s.chain_ids)
        for n, s in enumerate(softsign, 1)
    ]
    if yubihsm is not None:
        entries += [
            ("[[providers.yubihsm]] #1", f"keys[{i}].chain_ids", k.type, k.chain_ids)
            for i, k in enumerate(yubihsm.keys)
        ]
    if pkcs11 is not None:
        entries += [
            ("[[providers.pkcs11]] #1", f"keys[{i}].chain_ids", k.type, k.chain_ids)
            for i, k in enumerate(pkcs11.keys)
        ]
    for label, key, role, chain_ids in entries:
        section = Section(file, label)
        for index, cid in enumerate(chain_ids):
            if cid not in chains:
                raise section.error(f"{key}[{index}]", _unknown_chain(cid, chains))
            if (cid, role) in owners:
                raise section.error(
                    f"{key}[{index}]",
                    f"chain {quote(cid)} already has a {role} key (from {owners[cid, role]})",
                )
            owners[cid, role] = label
    return {cid: label for (cid, role), label in owners.items() if role == "consensus"}


def _unknown_chain(cid: str, chains: dict[str, ChainConfig]) -> str:
    known = ", ".join(quote(c) for c in chains) or "none"
    return f"unknown chain id {quote(cid)}: no [[chain]] has this id (defined: {known})"


def _validator(
    table: Table, chains: dict[str, ChainConfig], consensus: dict[str, str], base: Path
) -> ValidatorConfig:
    table.allow(
        ["chain_id", "addr", "secret_key", "protocol_version", "reconnect", "timeout", "max_height"]
    )
    cid = chain_id(table, "chain_id")
    if cid not in chains:
        raise table.error("chain_id", _unknown_chain(cid, chains))
    if cid not in consensus:
        raise table.error(
            "chain_id",
            f"no consensus key for chain {quote(cid)}: add a [[providers.softsign]] or "
            f"[[providers.yubihsm]] key with this chain id",
        )
    try:
        addr = parse_address(table.string("addr"))
    except ValueError as exc:
        raise table.error("addr", str(exc)) from exc
    secret_key = table.path("secret_key", base, None)
    if addr.scheme == "tcp" and secret_key is None:
        raise table.error(
            "secret_key",
            "missing required key: tcp:// validators need a Secret Connection identity key "
            "(e.g. secrets/kms-identity.key from `tmkms init`)",
        )
    return ValidatorConfig(
        chain_id=cid,
        addr=addr,
        secret_key=secret_key,
        protocol_version=_protocol_version(table),
        reconnect=table.boolean("reconnect", True),
        timeout=table.seconds("timeout", DEFAULT_VALIDATOR_TIMEOUT, high=65535),
        max_height=_max_height(table),
    )


def _protocol_version(table: Table) -> ProtocolVersion:
    text = table.string("protocol_version", None)
    if text is None:
        return ProtocolVersion.V0_38
    if text in OLD_PROTOCOL_VERSIONS:
        raise table.error("protocol_version", f"{quote(text)}: {OLD_PROTOCOL_VERSIONS[text]}")
    try:
        return ProtocolVersion.parse(text)
    except ValueError as exc:
        expected = ", ".join(quote(v.value) for v in ProtocolVersion)
        raise table.error(
            "protocol_version",
            f"unknown protocol version {quote(text)} (expected one of {expected})",
        ) from exc


def _max_height(table: Table) -> int | None:
    if not table.has("max_height"):
        return None
    value = table.data["max_height"]
    if isinstance(value, int) and not isinstance(value, bool):
        raise table.error(
            "max_height", f'expected a quoted integer such as "{value}", got integer {value}'
        )
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise table.error(
            "max_height", f'expected a quoted integer such as "500000", got {describe(value)}'
        )
    height = int(value)
    if height > MAX_HEIGHT_LIMIT:
        raise table.error("max_height", f"{value} is out of range (at most {MAX_HEIGHT_LIMIT})")
    return height


def _metrics(raw: Any, top: Table, file: Path) -> MetricsConfig:
    """`[metrics]`: ``bind_address`` (tmkms's name for it) or ``laddr`` (ours, kept as alias)."""
    if not isinstance(raw, dict):
        raise top.error("metrics", f"expected a table [metrics], got {describe(raw)}")
    table = Table(raw, Section(file, "[metrics]"))
    table.allow(["bind_address", "laddr"])
    if table.has("bind_address") and table.has("laddr"):
        raise table.error(
            "laddr", "give only one of bind_address and laddr (laddr is an alias of bind_address)"
        )
    key = "laddr" if table.has("laddr") else "bind_address"
    if not table.has(key):
        raise table.error(key, "missing required key (host:port such as 127.0.0.1:9181)")
    laddr = table.string(key)
    try:
        parse_listen_address(laddr)
    except ValueError as exc:
        raise table.error(
            key, f"expected host:port such as 127.0.0.1:9181, got {describe(laddr)}"
        ) from exc
    return MetricsConfig(laddr=laddr)


def _etcd(raw: Any, top: Table, file: Path, base: Path) -> EtcdSettings:
    """`[etcd]`: the shared watermark's cluster (see README, "High availability")."""
    if not isinstance(raw, dict):
        raise top.error("etcd", f"expected a table [etcd], got {describe(raw)}")
    table = Table(raw, Section(file, "[etcd]"))
    files = ("ca_file", "cert_file", "key_file", "password_file")
    table.allow(["endpoints", "prefix", "host", "timeout", "username", *files])
    values: dict[str, Any] = {"endpoints": table.string_list("endpoints")}
    for key in ("prefix", "host", "username"):
        if table.has(key):
            values[key] = table.string(key)
    values["timeout"] = table.seconds("timeout", DEFAULT_ETCD_TIMEOUT, high=MAX_ETCD_TIMEOUT)
    for key in files:
        if table.has(key):
            values[key] = table.path(key, base)
    try:
        return EtcdSettings(**values)
    except ValueError as exc:  # "<key>: <problem>"
        key, _, problem = str(exc).partition(": ")
        raise table.error(key, problem) from exc
