"""Every kind of tmkms.toml mistake: one ConfigError line naming file, section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.config import load_config
from kms.errors import ConfigError

CHAIN = (
    '\n[[chain]]\nid = "osmosis-1"\nkey_format = { type = "bech32", '
    'account_key_prefix = "osmopub", consensus_key_prefix = "osmovalconspub" }\n'
)
SOFTSIGN = """
[[providers.softsign]]
chain_ids = ["osmosis-1"]
path = "/keys/consensus.key"
"""
VALIDATOR = """
[[validator]]
chain_id = "osmosis-1"
addr = "tcp://127.0.0.1:26659"
secret_key = "/keys/id.key"
"""
YUBIHSM = """
[[providers.yubihsm]]
adapter = { type = "usb" }
auth = { key = 1, password_file = "/keys/pw" }
keys = [{ chain_ids = ["osmosis-1"], key = 1 }]
"""
GOOD = CHAIN + SOFTSIGN + VALIDATOR
CHAIN_LABEL = '[[chain]] #1 (id = "osmosis-1")'
VALIDATOR_LABEL = '[[validator]] #1 (chain_id = "osmosis-1")'


def with_chain(extra: str) -> str:
    """The good config with ``extra`` lines added to the [[chain]] section."""
    return CHAIN + extra + "\n" + SOFTSIGN + VALIDATOR


def with_validator(extra: str, *, drop: str = "") -> str:
    """The good config with ``extra`` added to (and line ``drop`` removed from) [[validator]]."""
    validator = VALIDATOR.replace(drop + "\n", "") if drop else VALIDATOR
    return CHAIN + SOFTSIGN + validator + extra + "\n"


def with_yubihsm(section: str) -> str:
    """A config whose only key provider is ``section``."""
    return CHAIN + section + VALIDATOR


CASES: list[tuple[str, str, str]] = [
    # --- top level ---
    (
        "unknown-top-level-key",
        "foo = 1\n" + GOOD,
        'top level: key "foo": unknown key (expected one of: chain, providers, validator, metrics, etcd)',
    ),
    (
        "chain-as-plain-table",
        '[chain]\nid = "osmosis-1"\n',
        'top level: key "chain": expected an array of tables: write [[chain]], not [chain]',
    ),
    (
        "validator-not-a-table",
        'validator = "tcp://x:1"\n' + CHAIN,
        'top level: key "validator": expected an array of tables [[validator]], '
        'got string "tcp://x:1"',
    ),
    (
        "providers-not-a-table",
        "providers = 3\n" + CHAIN,
        'top level: key "providers": expected a table [providers], got integer 3',
    ),
    # --- [[chain]] ---
    (
        "chain-unknown-key",
        with_chain('stat_file = "/x.json"'),
        f'{CHAIN_LABEL}: key "stat_file": unknown key (expected one of: id, key_format, '
        "state_file, sign_extensions, state_hook)",
    ),
    (
        "chain-missing-id",
        '[[chain]]\nkey_format = { type = "hex" }\n',
        '[[chain]] #1: key "id": missing required key',
    ),
    (
        "chain-id-wrong-type",
        '[[chain]]\nid = 5\nkey_format = { type = "hex" }\n',
        '[[chain]] #1: key "id": expected a string, got integer 5',
    ),
    (
        "chain-id-bad-characters",
        '[[chain]]\nid = "osmosis 1"\nkey_format = { type = "hex" }\n',
        '[[chain]] #1 (id = "osmosis 1"): key "id": invalid chain id string "osmosis 1": '
        "use only A-Z a-z 0-9 . _ -",
    ),
    (
        "chain-id-too-long",
        f'[[chain]]\nid = "{"a" * 51}"\nkey_format = {{ type = "hex" }}\n',
        f'[[chain]] #1 (id = "{"a" * 51}"): key "id": chain id must be 1 to 50 characters, got 51',
    ),
    (
        "chain-id-empty",
        '[[chain]]\nid = ""\nkey_format = { type = "hex" }\n',
        '[[chain]] #1 (id = ""): key "id": chain id must be 1 to 50 characters, got 0',
    ),
    (
        "chain-duplicate-id",
        CHAIN + CHAIN,
        '[[chain]] #2 (id = "osmosis-1"): key "id": duplicate chain id "osmosis-1" '
        "(also in [[chain]] #1)",
    ),
    (
        "chain-missing-key-format",
        '[[chain]]\nid = "osmosis-1"\n',
        f'{CHAIN_LABEL}: key "key_format": missing required key',
    ),
    (
        "key-format-not-a-table",
        '[[chain]]\nid = "osmosis-1"\nkey_format = "bech32"\n',
        f'{CHAIN_LABEL}: key "key_format": expected a table, got string "bech32"',
    ),
    (
        "key-format-unknown-type",
        '[[chain]]\nid = "osmosis-1"\nkey_format = { type = "base58" }\n',
        f'{CHAIN_LABEL}: key "key_format.type": unknown value string "base58" '
        '(expected one of "bech32", "hex", "cosmos-json")',
    ),
    (
        "key-format-bech32-missing-prefix",
        '[[chain]]\nid = "osmosis-1"\n'
        'key_format = { type = "bech32", account_key_prefix = "osmopub" }\n',
        f'{CHAIN_LABEL}: key "key_format.consensus_key_prefix": missing required key',
    ),
    (
        "key-format-hex-with-prefix",
        '[[chain]]\nid = "osmosis-1"\nkey_format = { type = "hex", account_key_prefix = "x" }\n',
        f'{CHAIN_LABEL}: key "key_format.account_key_prefix": unknown key (expected one of: type)',
    ),
    (
        "key-format-bad-prefix",
        '[[chain]]\nid = "osmosis-1"\nkey_format = { type = "bech32", '
        'account_key_prefix = "osmo pub", consensus_key_prefix = "osmovalconspub" }\n',
        f'{CHAIN_LABEL}: key "key_format.account_key_prefix": invalid bech32 prefix '
        "'osmo pub': use printable ASCII characters",
    ),
    (
        "sign-extensions-not-bool",
        with_chain('sign_extensions = "yes"'),
        f'{CHAIN_LABEL}: key "sign_extensions": expected true or false, got string "yes"',
    ),
    (
        "state-file-empty",
        with_chain('state_file = ""'),
        f'{CHAIN_LABEL}: key "state_file": must not be empty',
    ),
    (
        "state-hook-empty-cmd",
        with_chain("state_hook = { cmd = [] }"),
        f'{CHAIN_LABEL}: key "state_hook.cmd": expected a non-empty array of strings, got an array',
    ),
    (
        "state-hook-cmd-item-not-string",
        with_chain('state_hook = { cmd = ["/bin/h", 3] }'),
        f'{CHAIN_LABEL}: key "state_hook.cmd[1]": expected a non-empty string, got integer 3',
    ),
    (
        "state-hook-unknown-key",
        with_chain('state_hook = { cmd = ["/bin/h"], timeout = 3 }'),
        f'{CHAIN_LABEL}: key "state_hook.timeout": unknown key '
        "(expected one of: cmd, timeout_secs, fail_closed)",
    ),
    (
        "state-hook-zero-timeout",
        with_chain('state_hook = { cmd = ["/bin/h"], timeout_secs = 0 }'),
        f'{CHAIN_LABEL}: key "state_hook.timeout_secs": 0 is out of range '
        "(expected more than 0, at most 3600)",
    ),
    (
        "state-hook-fail-closed-not-bool",
        with_chain('state_hook = { cmd = ["/bin/h"], fail_closed = 1 }'),
        f'{CHAIN_LABEL}: key "state_hook.fail_closed": expected true or false, got integer 1',
    ),
    # --- [providers] ---
    (
        "ledger-unsupported",
        CHAIN + '[[providers.ledgertm]]\nchain_ids = ["osmosis-1"]\n',
        '[providers]: key "ledgertm": the Ledger provider (ledgertm) is not supported by this '
        "KMS: keep the consensus key in an HSM ([[providers.yubihsm]] or [[providers.pkcs11]]) "
        "or in a key file ([[providers.softsign]])",
    ),
    (
        "fortanix-unsupported",
        CHAIN + '[[providers.fortanixdsm]]\napi_endpoint = "https://x"\n',
        '[providers]: key "fortanixdsm": the Fortanix DSM provider (fortanixdsm) is not '
        "supported by this KMS: reach the key through the vendor's PKCS#11 library with "
        "[[providers.pkcs11]], or use [[providers.yubihsm]] or [[providers.softsign]]",
    ),
    (
        "unknown-provider",
        CHAIN + "[[providers.hsm]]\nslot = 1\n",
        '[providers]: key "hsm": unknown key (expected one of: softsign, yubihsm, pkcs11)',
    ),
    # --- [[providers.softsign]] ---
    (
        "softsign-unknown-key",
        CHAIN + SOFTSIGN + "key_path = 1\n",
        '[[providers.softsign]] #1: key "key_path": unknown key '
        "(expected one of: chain_ids, key_type, key_format, path)",
    ),
    (
        "softsign-chain-ids-not-array",
        CHAIN + '[[providers.softsign]]\nchain_ids = "osmosis-1"\npath = "/k"\n',
        '[[providers.softsign]] #1: key "chain_ids": expected a non-empty array of strings, '
        'got string "osmosis-1"',
    ),
    (
        "softsign-bad-chain-id",
        CHAIN + '[[providers.softsign]]\nchain_ids = ["osmosis/1"]\npath = "/k"\n',
        '[[providers.softsign]] #1: key "chain_ids[0]": invalid chain id string "osmosis/1": '
        "use only A-Z a-z 0-9 . _ -",
    ),
    (
        "softsign-unknown-chain",
        CHAIN + '[[providers.softsign]]\nchain_ids = ["cosmoshub-4"]\npath = "/k"\n',
        '[[providers.softsign]] #1: key "chain_ids[0]": unknown chain id "cosmoshub-4": '
        'no [[chain]] has this id (defined: "osmosis-1")',
    ),
    (
        "softsign-second-consensus-key",
        CHAIN + SOFTSIGN + SOFTSIGN,
        '[[providers.softsign]] #2: key "chain_ids[0]": chain "osmosis-1" already has a '
        "consensus key (from [[providers.softsign]] #1)",
    ),
    (
        "softsign-bad-key-type",
        CHAIN + SOFTSIGN + 'key_type = "validator"\n',
        '[[providers.softsign]] #1: key "key_type": unknown value string "validator" '
        '(expected one of "consensus", "account")',
    ),
    (
        "softsign-bad-key-format",
        CHAIN + SOFTSIGN + 'key_format = "raw"\n',
        '[[providers.softsign]] #1: key "key_format": unknown value string "raw" '
        '(expected one of "base64", "json")',
    ),
    (
        "softsign-account-json",
        CHAIN + SOFTSIGN + 'key_type = "account"\nkey_format = "json"\n',
        '[[providers.softsign]] #1: key "key_format": account keys must use key_format = "base64"',
    ),
    (
        "softsign-missing-path",
        CHAIN + '[[providers.softsign]]\nchain_ids = ["osmosis-1"]\n',
        '[[providers.softsign]] #1: key "path": missing required key',
    ),
    # --- [[providers.yubihsm]] ---
    (
        "yubihsm-twice",
        CHAIN + YUBIHSM + YUBIHSM,
        '[providers]: key "yubihsm": only one [[providers.yubihsm]] section is allowed, found 2',
    ),
    (
        "yubihsm-connector-server-unsupported",
        with_yubihsm(YUBIHSM + 'connector_server = { laddr = "tcp://127.0.0.1:12345" }\n'),
        '[[providers.yubihsm]] #1: key "connector_server": the built-in yubihsm-connector server '
        'is not supported; run yubihsm-connector and use adapter = { type = "http", addr = ... }',
    ),
    (
        "yubihsm-missing-adapter",
        CHAIN + '[[providers.yubihsm]]\nauth = { key = 1, password = "x" }\n',
        '[[providers.yubihsm]] #1: key "adapter": missing required key',
    ),
    (
        "yubihsm-adapter-bad-type",
        with_yubihsm(YUBIHSM.replace('type = "usb"', 'type = "pcsc"')),
        '[[providers.yubihsm]] #1: key "adapter.type": unknown value string "pcsc" '
        '(expected one of "usb", "http")',
    ),
    (
        "yubihsm-http-without-addr",
        with_yubihsm(YUBIHSM.replace('type = "usb"', 'type = "http"')),
        '[[providers.yubihsm]] #1: key "adapter.addr": missing required key',
    ),
    (
        "yubihsm-usb-with-addr",
        with_yubihsm(YUBIHSM.replace('type = "usb"', 'type = "usb", addr = "tcp://h:1"')),
        '[[providers.yubihsm]] #1: key "adapter.addr": unknown key '
        "(expected one of: type, timeout_ms)",
    ),
    (
        "yubihsm-http-unix-addr",
        with_yubihsm(YUBIHSM.replace('type = "usb"', 'type = "http", addr = "unix:///x"')),
        '[[providers.yubihsm]] #1: key "adapter.addr": expected tcp://host:port of '
        'yubihsm-connector, got string "unix:///x"',
    ),
    (
        "yubihsm-usb-timeout-zero",
        with_yubihsm(YUBIHSM.replace('type = "usb"', 'type = "usb", timeout_ms = 0')),
        '[[providers.yubihsm]] #1: key "adapter.timeout_ms": 0 is out of range '
        "(expected 1 to 600000)",
    ),
    (
        "yubihsm-auth-both-passwords",
        with_yubihsm(
            YUBIHSM.replace('password_file = "/keys/pw"', 'password_file = "/p", password = "x"')
        ),
        '[[providers.yubihsm]] #1: key "auth.password": give exactly one of password or '
        "password_file",
    ),
    (
        "yubihsm-auth-no-password",
        with_yubihsm(YUBIHSM.replace(', password_file = "/keys/pw"', "")),
        '[[providers.yubihsm]] #1: key "auth.password_file": give exactly one of password or '
        "password_file",
    ),
    (
        "yubihsm-auth-key-out-of-range",
        with_yubihsm(YUBIHSM.replace("auth = { key = 1", "auth = { key = 70000")),
        '[[providers.yubihsm]] #1: key "auth.key": 70000 is out of range (expected 1 to 65535)',
    ),
    (
        "yubihsm-keys-unknown-chain",
        with_yubihsm(
            YUBIHSM.replace(
                'keys = [{ chain_ids = ["osmosis-1"]', 'keys = [{ chain_ids = ["juno-1"]'
            )
        ),
        '[[providers.yubihsm]] #1: key "keys[0].chain_ids[0]": unknown chain id "juno-1": '
        'no [[chain]] has this id (defined: "osmosis-1")',
    ),
    (
        "yubihsm-keys-bad-type",
        with_yubihsm(YUBIHSM.replace("key = 1 }]", 'key = 1, type = "validator" }]')),
        '[[providers.yubihsm]] #1: key "keys[0].type": unknown value string "validator" '
        '(expected one of "consensus", "account")',
    ),
    (
        "yubihsm-keys-entry-not-table",
        with_yubihsm(
            YUBIHSM.replace('keys = [{ chain_ids = ["osmosis-1"], key = 1 }]', "keys = [1]")
        ),
        '[[providers.yubihsm]] #1: key "keys[0]": expected a table, got integer 1',
    ),
    (
        "yubihsm-and-softsign-consensus-key",
        CHAIN + SOFTSIGN + YUBIHSM + VALIDATOR,
        '[[providers.yubihsm]] #1: key "keys[0].chain_ids[0]": chain "osmosis-1" already has a '
        "consensus key (from [[providers.softsign]] #1)",
    ),
    (
        "yubihsm-serial-not-digits",
        with_yubihsm(YUBIHSM + 'serial_number = "abc"\n'),
        '[[providers.yubihsm]] #1: key "serial_number": expected up to 10 decimal digits, '
        'got string "abc"',
    ),
    (
        "yubihsm-serial-integer",
        with_yubihsm(YUBIHSM + "serial_number = 123\n"),
        '[[providers.yubihsm]] #1: key "serial_number": expected a string, got integer 123',
    ),
    # --- [[validator]] ---
    (
        "validator-unknown-key",
        with_validator('peer_id = "abc"'),
        f'{VALIDATOR_LABEL}: key "peer_id": unknown key (expected one of: chain_id, addr, '
        "secret_key, protocol_version, reconnect, timeout, max_height)",
    ),
    (
        "validator-unknown-chain",
        GOOD.replace('chain_id = "osmosis-1"', 'chain_id = "cosmoshub-4"'),
        '[[validator]] #1 (chain_id = "cosmoshub-4"): key "chain_id": unknown chain id '
        '"cosmoshub-4": no [[chain]] has this id (defined: "osmosis-1")',
    ),
    (
        "validator-chain-without-key",
        CHAIN
        + '[[chain]]\nid = "juno-1"\nkey_format = { type = "hex" }\n'
        + SOFTSIGN
        + VALIDATOR.replace("osmosis-1", "juno-1"),
        '[[validator]] #1 (chain_id = "juno-1"): key "chain_id": no consensus key for chain '
        '"juno-1": add a [[providers.softsign]] or [[providers.yubihsm]] key with this chain id',
    ),
    (
        "validator-missing-addr",
        with_validator("", drop='addr = "tcp://127.0.0.1:26659"'),
        f'{VALIDATOR_LABEL}: key "addr": missing required key',
    ),
    (
        "validator-addr-without-scheme",
        GOOD.replace("tcp://127.0.0.1:26659", "127.0.0.1:26659"),
        f"{VALIDATOR_LABEL}: key \"addr\": invalid address '127.0.0.1:26659': expected "
        "tcp://host:port or unix:///path",
    ),
    (
        "validator-addr-bad-peer-id",
        GOOD.replace("tcp://127.0.0.1", "tcp://abc@127.0.0.1"),
        f"{VALIDATOR_LABEL}: key \"addr\": invalid address 'tcp://abc@127.0.0.1:26659': "
        "peer ID must be 40 hex characters",
    ),
    (
        "validator-tcp-without-secret-key",
        with_validator("", drop='secret_key = "/keys/id.key"'),
        f'{VALIDATOR_LABEL}: key "secret_key": missing required key: tcp:// validators need a '
        "Secret Connection identity key (e.g. secrets/kms-identity.key from `tmkms init`)",
    ),
    (
        "validator-unknown-protocol-version",
        with_validator('protocol_version = "v9"'),
        f'{VALIDATOR_LABEL}: key "protocol_version": unknown protocol version "v9" '
        '(expected one of "v0.34", "v0.37", "v0.38", "v1", "celestia")',
    ),
    (
        "second-validator-named-by-number",
        GOOD + VALIDATOR + 'protocol_version = "v9"\n',
        '[[validator]] #2 (chain_id = "osmosis-1"): key "protocol_version": unknown protocol '
        'version "v9" (expected one of "v0.34", "v0.37", "v0.38", "v1", "celestia")',
    ),
    (
        "validator-reconnect-not-bool",
        with_validator('reconnect = "yes"'),
        f'{VALIDATOR_LABEL}: key "reconnect": expected true or false, got string "yes"',
    ),
    (
        "validator-timeout-string",
        with_validator('timeout = "10"'),
        f'{VALIDATOR_LABEL}: key "timeout": expected a number of seconds, got string "10"',
    ),
    (
        "validator-timeout-zero",
        with_validator("timeout = 0"),
        f'{VALIDATOR_LABEL}: key "timeout": 0 is out of range '
        "(expected more than 0, at most 65535)",
    ),
    (
        "max-height-unquoted",
        with_validator("max_height = 500000"),
        f'{VALIDATOR_LABEL}: key "max_height": expected a quoted integer such as "500000", '
        "got integer 500000",
    ),
    (
        "max-height-not-a-number",
        with_validator('max_height = "-5"'),
        f'{VALIDATOR_LABEL}: key "max_height": expected a quoted integer such as "500000", '
        'got string "-5"',
    ),
    (
        "max-height-too-big",
        with_validator('max_height = "9223372036854775808"'),
        f'{VALIDATOR_LABEL}: key "max_height": 9223372036854775808 is out of range '
        "(at most 9223372036854775807)",
    ),
    # --- [metrics] ---
    (
        "metrics-bad-laddr",
        '[metrics]\nladdr = "9181"\n' + GOOD,
        '[metrics]: key "laddr": expected host:port such as 127.0.0.1:9181, got string "9181"',
    ),
    (
        "metrics-unknown-key",
        '[metrics]\nladdr = "127.0.0.1:9181"\npath = "/metrics"\n' + GOOD,
        '[metrics]: key "path": unknown key (expected one of: bind_address, laddr)',
    ),
    (
        "metrics-not-a-table",
        'metrics = "127.0.0.1:9181"\n' + GOOD,
        'top level: key "metrics": expected a table [metrics], got string "127.0.0.1:9181"',
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_error_is_one_line_naming_file_section_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"{path}: {expected}"


def test_good_base_config_loads(tmp_path: Path) -> None:
    """The cases above are single mistakes in this config, which itself is fine."""
    for text in (GOOD, with_yubihsm(YUBIHSM)):
        path = tmp_path / "tmkms.toml"
        path.write_text(text)
        assert load_config(path).validators[0].chain_id == "osmosis-1"


def test_password_of_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_text(
        with_yubihsm(YUBIHSM.replace('password_file = "/keys/pw"', "password = 86753091"))
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f'{path}: [[providers.yubihsm]] #1: key "auth.password": expected a string, got integer'
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[chain]]\nid = "a"\nid = "b"\n', "invalid TOML: Cannot overwrite a value"),
        ("[[chain]\n", "invalid TOML: "),
        ('key = "unterminated\n', "invalid TOML: "),
    ],
)
def test_invalid_toml(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is not None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read config file: No such file or directory"
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_bytes(b'[[chain]]\nid = "\xff"\n')
    with pytest.raises(ConfigError, match="config file is not UTF-8 text"):
        load_config(path)


@pytest.mark.parametrize("spelling", ["other/../state.json", "link.json"])
def test_two_chains_sharing_one_state_file_are_refused(tmp_path: Path, spelling: str) -> None:
    """Each chain's writes would erase the other's state: the next vote could double sign."""
    (tmp_path / "link.json").symlink_to(tmp_path / "state.json")
    path = tmp_path / "tmkms.toml"
    path.write_text(
        f'[[chain]]\nid = "a-1"\nkey_format = {{ type = "hex" }}\n'
        f'state_file = "{tmp_path}/state.json"\n'
        f'[[chain]]\nid = "b-1"\nkey_format = {{ type = "hex" }}\n'
        f'state_file = "{tmp_path}/{spelling}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f'{path}: [[chain]] #2 (id = "b-1"): key "state_file": "{tmp_path}/{spelling}" is '
        'already the state file of chain "a-1" ([[chain]] #1)'
    )
