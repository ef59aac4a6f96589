"""tmkms.toml files that must load: the seed guide's, `tmkms init`'s, and every feature."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from kms.config import (
    CONFIG_ENV_VAR,
    KeyFormat,
    StateHook,
    YubihsmAdapter,
    YubihsmKeyConfig,
    config_path_from,
    load_config,
)
from kms.config.template import NETWORKS, Network, parse_networks, render_config
from kms.logs import redact
from kms.protocol.version import ProtocolVersion
from kms.transport.address import parse_address

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_seed_guide_config_loads_as_written() -> None:
    config = load_config(FIXTURES / "tmkms-osmosis-guide.toml")
    assert config.path == FIXTURES / "tmkms-osmosis-guide.toml"
    (chain,) = config.chains
    assert chain.id == "osmosis-1"
    assert chain.key_format == KeyFormat("bech32", "osmopub", "osmovalconspub")
    assert chain.state_file == Path("/root/kms/osmosis/state/priv_validator_state.json")
    assert chain.sign_extensions is None
    assert chain.state_hook is None
    (softsign,) = config.softsign
    assert softsign.chain_ids == ("osmosis-1",)
    assert softsign.key_type == "consensus"
    assert softsign.key_format == "base64"
    assert softsign.path == Path("/root/kms/osmosis/secrets/priv_validator_key")
    assert config.yubihsm is None
    (validator,) = config.validators
    assert validator.chain_id == "osmosis-1"
    assert validator.addr == parse_address("tcp://localhost:26659")
    assert validator.secret_key == Path("/root/kms/osmosis/secrets/secret_connection_key")
    assert validator.protocol_version is ProtocolVersion.V0_34
    assert validator.reconnect is True
    assert validator.timeout == 10.0
    assert validator.max_height is None
    assert config.metrics is None
    assert config.chain("osmosis-1") is chain


def test_every_feature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(FIXTURES / "tmkms-full.toml")
    hub, osmo, test = config.chains
    assert hub.sign_extensions is False
    assert hub.state_hook == StateHook(
        cmd=("/usr/local/bin/latest-height", "--chain", "cosmoshub-4"),
        timeout_secs=3.0,
        fail_closed=True,
    )
    assert osmo.key_format == KeyFormat("cosmos-json")
    # no state_file: tmkms's default name, in the current directory
    assert osmo.state_file == tmp_path / "osmosis-1_priv_validator_state.json"
    assert test.key_format == KeyFormat("hex")
    assert test.state_file == tmp_path / "state" / "test-chain.json"
    assert test.state_hook == StateHook(cmd=("true",), timeout_secs=5.0, fail_closed=False)

    consensus, account = config.softsign
    assert consensus.chain_ids == ("osmosis-1", "my_test.chain-7")
    assert consensus.key_format == "json"
    assert account.key_type == "account"
    assert account.path == tmp_path / "secrets" / "osmosis-account.key"

    hsm = config.yubihsm
    assert hsm is not None
    assert hsm.adapter == YubihsmAdapter(
        type="http", addr="http://127.0.0.1:12345", timeout_ms=1000
    )
    assert hsm.auth.key == 4
    assert hsm.auth.password is None
    assert hsm.auth.password_file == tmp_path / "secrets" / "yubihsm-password.txt"
    assert hsm.keys == (
        YubihsmKeyConfig(chain_ids=("cosmoshub-4",), key=1, type="consensus"),
        YubihsmKeyConfig(chain_ids=("cosmoshub-4",), key=2, type="account"),
    )
    assert hsm.serial_number == "0012345678"

    pinned, ipv6, unix = config.validators
    assert pinned.addr.peer_id == "f88883b673fc69d7869cab098de3bafc2ff76eb8"
    assert pinned.protocol_version is ProtocolVersion.V0_37
    assert pinned.reconnect is False
    assert pinned.timeout == 2.5
    assert pinned.max_height == 23_000_000
    assert ipv6.addr.host == "::1"
    assert ipv6.protocol_version is ProtocolVersion.V0_38
    assert unix.addr.scheme == "unix"
    assert unix.secret_key is None
    assert unix.protocol_version is ProtocolVersion.V1
    assert config.metrics is not None
    assert config.metrics.laddr == "127.0.0.1:9181"


def test_config_classes_are_frozen() -> None:
    config = load_config(FIXTURES / "tmkms-osmosis-guide.toml")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.chains[0].id = "other"  # type: ignore[misc]


def test_chain_lookup_of_unknown_id_raises_key_error() -> None:
    config = load_config(FIXTURES / "tmkms-osmosis-guide.toml")
    with pytest.raises(KeyError, match="cosmoshub-4"):
        config.chain("cosmoshub-4")


def test_relative_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "tmkms.toml").write_text(
        '[[chain]]\nid = "osmosis-1"\nkey_format = { type = "hex" }\n'
        '[[providers.softsign]]\nchain_ids = ["osmosis-1"]\npath = "secrets/key"\n'
        '[[validator]]\nchain_id = "osmosis-1"\naddr = "tcp://127.0.0.1:1"\n'
        'secret_key = "../id.key"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../home/tmkms.toml"))
    assert config.path == elsewhere / "../home/tmkms.toml"
    assert config.softsign[0].path == elsewhere / "secrets" / "key"
    assert config.validators[0].secret_key == elsewhere / ".." / "id.key"
    assert config.chains[0].state_file == elsewhere / "osmosis-1_priv_validator_state.json"


def test_config_without_providers_or_validators_loads(tmp_path: Path) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_text('[[chain]]\nid = "a"\nkey_format = { type = "hex" }\n')
    config = load_config(path)
    assert [c.id for c in config.chains] == ["a"]
    assert config.softsign == () and config.validators == () and config.yubihsm is None


def test_yubihsm_usb_and_password_defaults(tmp_path: Path) -> None:
    path = tmp_path / "tmkms.toml"
    password = "correct-horse-battery"
    path.write_text(
        '[[chain]]\nid = "a"\nkey_format = { type = "hex" }\n'
        "[[providers.yubihsm]]\n"
        'adapter = { type = "usb" }\n'
        f'auth = {{ key = 1, password = "{password}" }}\n'
        'keys = [{ chain_ids = ["a"], key = 3 }]\n'
    )
    hsm = load_config(path).yubihsm
    assert hsm is not None
    assert hsm.adapter == YubihsmAdapter(type="usb", addr=None, timeout_ms=1000)
    assert hsm.auth.password == password
    assert hsm.keys[0].type == "consensus"
    assert hsm.serial_number is None
    assert password not in repr(hsm)  # never printed by accident
    assert password not in redact(f"auth failed with {password}")


@pytest.mark.parametrize(
    "networks",
    [(n,) for n in NETWORKS] + [NETWORKS],
    ids=[n.name for n in NETWORKS] + ["all"],
)
def test_init_template_loads(tmp_path: Path, networks: tuple[Network, ...]) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_text(render_config(tmp_path, networks))
    config = load_config(path)
    assert [c.id for c in config.chains] == [n.chain_id for n in networks]
    for chain, net in zip(config.chains, networks, strict=True):
        assert chain.key_format == KeyFormat(
            "bech32", net.account_key_prefix, net.consensus_key_prefix
        )
        assert chain.state_file == tmp_path / "state" / f"{chain.id}-consensus.json"
    assert [s.chain_ids for s in config.softsign] == [(n.chain_id,) for n in networks]
    for softsign in config.softsign:
        assert softsign.key_type == "consensus"
        assert softsign.path == tmp_path / "secrets" / f"{softsign.chain_ids[0]}-consensus.key"
    assert [v.chain_id for v in config.validators] == [n.chain_id for n in networks]
    for validator in config.validators:
        assert validator.secret_key == tmp_path / "secrets" / "kms-identity.key"
        assert validator.protocol_version is ProtocolVersion.V0_38


def test_init_template_quotes_awkward_paths(tmp_path: Path) -> None:
    home = tmp_path / 'we"ird \\ dir'
    path = tmp_path / "tmkms.toml"
    path.write_text(render_config(home, parse_networks("osmosis")))
    config = load_config(path)
    assert config.softsign[0].path == home / "secrets" / "osmosis-1-consensus.key"


def test_network_names_and_chain_ids() -> None:
    assert [n.chain_id for n in parse_networks(None)] == ["cosmoshub-4"]
    assert [n.chain_id for n in parse_networks("osmosis,cosmoshub")] == ["osmosis-1", "cosmoshub-4"]
    assert [n.name for n in parse_networks("osmosis-1,persistence,osmosis")] == ["osmosis", "core"]
    with pytest.raises(ValueError, match=r"unknown network 'terra'.*cosmoshub"):
        parse_networks("osmosis,terra")


def test_config_path_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert config_path_from(None) == Path("tmkms.toml")
    monkeypatch.setenv(CONFIG_ENV_VAR, "/etc/tmkms/tmkms.toml")
    assert config_path_from(None) == Path("/etc/tmkms/tmkms.toml")
    assert config_path_from("/root/kms/osmosis/tmkms.toml") == Path("/root/kms/osmosis/tmkms.toml")
