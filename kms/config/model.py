"""The parsed form of tmkms.toml: frozen attrs classes, one per section.

All paths are absolute (relative ones in the file are resolved against the current working
directory when the file is loaded, which is where tmkms would open them too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from kms.config.etcd import EtcdSettings
from kms.protocol.version import ProtocolVersion
from kms.transport.address import Address

DEFAULT_PROTOCOL_VERSION = ProtocolVersion.V0_38
DEFAULT_VALIDATOR_TIMEOUT = 10.0
DEFAULT_HOOK_TIMEOUT = 5.0
DEFAULT_USB_TIMEOUT_MS = 1000


@attrs.frozen
class KeyFormat:
    """`key_format` of a `[[chain]]`: how its public keys are displayed."""

    type: Literal["bech32", "hex", "cosmos-json"]
    account_key_prefix: str | None = None
    consensus_key_prefix: str | None = None


@attrs.frozen
class StateHook:
    """`state_hook` of a `[[chain]]`: a command printing the chain's latest block height."""

    cmd: tuple[str, ...]
    timeout_secs: float = DEFAULT_HOOK_TIMEOUT
    fail_closed: bool = False


@attrs.frozen
class ChainConfig:
    """One `[[chain]]` section."""

    id: str
    key_format: KeyFormat
    state_file: Path
    sign_extensions: bool | None = None
    state_hook: StateHook | None = None


@attrs.frozen
class SoftsignConfig:
    """One `[[providers.softsign]]` section: a key file on disk."""

    chain_ids: tuple[str, ...]
    key_type: Literal["consensus", "account"]
    key_format: Literal["base64", "json"]
    path: Path


@attrs.frozen
class YubihsmAdapter:
    """How to reach the YubiHSM 2: directly over USB, or through yubihsm-connector (HTTP)."""

    type: Literal["usb", "http"]
    addr: str | None = None
    timeout_ms: int = DEFAULT_USB_TIMEOUT_MS


@attrs.frozen(repr=False)
class YubihsmAuth:
    """The authentication key ID and exactly one of a password or a password file."""

    key: int
    password: str | None = None
    password_file: Path | None = None

    def __repr__(self) -> str:
        secret = "password=<redacted>" if self.password is not None else "password=None"
        return f"YubihsmAuth(key={self.key}, {secret}, password_file={self.password_file!r})"


@attrs.frozen
class YubihsmKeyConfig:
    """One entry of `keys = [...]` in `[[providers.yubihsm]]`."""

    chain_ids: tuple[str, ...]
    key: int
    type: Literal["consensus", "account"] = "consensus"


@attrs.frozen
class YubihsmConfig:
    """The (single) `[[providers.yubihsm]]` section."""

    adapter: YubihsmAdapter
    auth: YubihsmAuth
    keys: tuple[YubihsmKeyConfig, ...] = ()
    serial_number: str | None = None


@attrs.frozen
class Pkcs11KeyConfig:
    """One entry of `keys = [...]` in `[[providers.pkcs11]]`: found by `label`, `id` or both."""

    chain_ids: tuple[str, ...]
    label: str | None = None
    id: bytes | None = None
    type: Literal["consensus"] = "consensus"


@attrs.frozen(repr=False)
class Pkcs11Config:
    """The (single) `[[providers.pkcs11]]` section: a token of a PKCS#11 module."""

    module: Path
    token_label: str | None = None
    slot: int | None = None
    pin: str | None = None
    pin_file: Path | None = None
    keys: tuple[Pkcs11KeyConfig, ...] = ()

    def __repr__(self) -> str:
        token = f"token_label={self.token_label!r}" if self.slot is None else f"slot={self.slot}"
        pin = "pin=<redacted>" if self.pin is not None else f"pin_file={self.pin_file!r}"
        return f"Pkcs11Config(module={self.module!r}, {token}, {pin}, keys={self.keys!r})"


@attrs.frozen
class ValidatorConfig:
    """One `[[validator]]` section: a CometBFT node to dial and serve."""

    chain_id: str
    addr: Address
    secret_key: Path | None = None
    protocol_version: ProtocolVersion = DEFAULT_PROTOCOL_VERSION
    reconnect: bool = True
    timeout: float = DEFAULT_VALIDATOR_TIMEOUT
    max_height: int | None = None


@attrs.frozen
class MetricsConfig:
    """`[metrics]`: where to serve Prometheus metrics, e.g. 127.0.0.1:9181.

    The file spells it ``bind_address`` (tmkms's key) or ``laddr`` (this KMS's first name for
    it, still accepted); both land here.
    """

    laddr: str


@attrs.frozen
class KmsConfig:
    """A whole tmkms.toml."""

    path: Path
    chains: tuple[ChainConfig, ...] = ()
    softsign: tuple[SoftsignConfig, ...] = ()
    yubihsm: YubihsmConfig | None = None
    validators: tuple[ValidatorConfig, ...] = ()
    metrics: MetricsConfig | None = None
    pkcs11: Pkcs11Config | None = None
    etcd: EtcdSettings | None = None  # the shared watermark (high availability)

    def chain(self, chain_id: str) -> ChainConfig:
        """The `[[chain]]` with this ID; KeyError if there is none."""
        for chain in self.chains:
            if chain.id == chain_id:
                return chain
        raise KeyError(f"no [[chain]] with id {chain_id!r} in {self.path}")
