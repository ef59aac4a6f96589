"""Files an operator carries over from tmkms (and from the node): each key of tmkms's config
structs is either understood or refused with what to do instead; a CometBFT state file where
a tmkms one belongs is named as such, and the advice given works."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from kms.chain.state import BlockRef, SignState
from kms.chain.stateformat import COMETBFT_STATE_FILE, format_state, parse_state
from kms.config import MetricsConfig, load_config
from kms.errors import ConfigError
from kms.protocol.messages import SignedMsgType
from kms.protocol.signbytes import vote_sign_bytes
from kms.protocol.version import ProtocolVersion
from kms.sim.consensus import make_vote, random_block_id
from tests.support.kmsproc import (
    chain_toml,
    free_tcp_port,
    run_tmkms,
    tmkms_start,
    validator_toml,
    write_key,
)
from tests.support.metrics import http_get, metrics_base

# A tmkms.toml as a tmkms v0.15 operator may have it (every key of tmkms's structs that this
# KMS supports), plus tmkms's `[metrics] bind_address` (its Prometheus exporter).
TMKMS_STYLE = """
[[chain]]
id = "osmosis-1"
key_format = { type = "bech32", account_key_prefix = "osmopub", consensus_key_prefix = "osmovalconspub" }
sign_extensions = true
state_file = "/kms/state/osmosis-1.json"
state_hook = { cmd = ["/usr/local/bin/height", "osmosis-1"], timeout_secs = 7, fail_closed = true }

[[chain]]
id = "cosmoshub-4"
key_format = { type = "cosmos-json" }

[[chain]]
id = "test-3"
key_format = { type = "hex" }

[[providers.softsign]]
chain_ids = ["osmosis-1"]
key_type = "consensus"
key_format = "json"
path = "/kms/secrets/priv_validator_key.json"

[[providers.softsign]]
chain_ids = ["osmosis-1"]
key_type = "account"
path = "/kms/secrets/account.key"

[[providers.yubihsm]]
adapter = { type = "http", addr = "tcp://127.0.0.1:12345" }
auth = { key = 1, password_file = "/kms/secrets/yubihsm-password" }
keys = [{ chain_ids = ["cosmoshub-4", "test-3"], key = 2, type = "consensus" }]
serial_number = "0123456789"

[[validator]]
addr = "tcp://f88883b673fc69d7869cab098de3bafc2ff76eb8@10.0.0.5:26658"
chain_id = "osmosis-1"
reconnect = false
timeout = 3
secret_key = "/kms/secrets/kms-identity.key"
max_height = "123456"
protocol_version = "v0.34"

[[validator]]
addr = "unix:///run/cosmoshub/privval.sock"
chain_id = "cosmoshub-4"

[metrics]
bind_address = "localhost:3333"
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_a_tmkms_style_config_loads_with_every_supported_key(tmp_path: Path) -> None:
    path = tmp_path / "tmkms.toml"
    path.write_text(TMKMS_STYLE)
    config = load_config(path)
    osmosis, hub, test = config.chains
    assert osmosis.sign_extensions is True
    assert osmosis.state_file == Path("/kms/state/osmosis-1.json")
    assert osmosis.state_hook is not None and osmosis.state_hook.fail_closed is True
    assert osmosis.state_hook.timeout_secs == 7.0
    assert (hub.key_format.type, test.key_format.type) == ("cosmos-json", "hex")
    consensus, account = config.softsign
    assert consensus.key_format == "json" and account.key_type == "account"
    assert config.yubihsm is not None and config.yubihsm.serial_number == "0123456789"
    assert config.yubihsm.adapter.addr == "http://127.0.0.1:12345"
    first, second = config.validators
    assert first.reconnect is False and first.timeout == 3.0 and first.max_height == 123456
    assert first.protocol_version is ProtocolVersion.V0_34
    assert second.addr.scheme == "unix" and second.protocol_version is ProtocolVersion.V0_38
    assert config.metrics == MetricsConfig(laddr="localhost:3333")


@pytest.mark.parametrize("key", ["bind_address", "laddr"])
def test_metrics_address_under_either_name(tmp_path: Path, key: str) -> None:
    """`bind_address` is tmkms's name; `laddr` (this KMS's first name for it) stays an alias."""
    text = TMKMS_STYLE.replace('bind_address = "localhost:3333"', f'{key} = "[::1]:9181"')
    config = load(tmp_path, text)
    assert config.metrics == MetricsConfig(laddr="[::1]:9181")  # type: ignore[attr-defined]


GOOD = TMKMS_STYLE.replace('\n[metrics]\nbind_address = "localhost:3333"\n', "\n")
YUBIHSM_LABEL = "[[providers.yubihsm]] #1"
VALIDATOR_LABEL = '[[validator]] #1 (chain_id = "osmosis-1")'

# tmkms sections and keys this KMS refuses, each with the one line an operator sees.
REFUSED: list[tuple[str, str, str]] = [
    (
        "ledgertm",
        GOOD + '\n[[providers.ledgertm]]\nchain_ids = ["osmosis-1"]\n',
        '[providers]: key "ledgertm": the Ledger provider (ledgertm) is not supported by this '
        "KMS: keep the consensus key in an HSM ([[providers.yubihsm]] or [[providers.pkcs11]]) "
        "or in a key file ([[providers.softsign]])",
    ),
    (
        "fortanixdsm",
        GOOD
        + '\n[[providers.fortanixdsm]]\napi_endpoint = "https://amer.smartkey.io"\n'
        + 'api_key = "secret"\nsigning_keys = [{ chain_ids = ["osmosis-1"], key_name = "v" }]\n',
        '[providers]: key "fortanixdsm": the Fortanix DSM provider (fortanixdsm) is not '
        "supported by this KMS: reach the key through the vendor's PKCS#11 library with "
        "[[providers.pkcs11]], or use [[providers.yubihsm]] or [[providers.softsign]]",
    ),
    (
        "yubihsm-connector-server",
        GOOD.replace(
            'serial_number = "0123456789"\n',
            'serial_number = "0123456789"\n'
            'connector_server = { laddr = "tcp://127.0.0.1:12345", cli = { auth_key = 2 } }\n',
        ),
        f'{YUBIHSM_LABEL}: key "connector_server": the built-in yubihsm-connector server is '
        'not supported; run yubihsm-connector and use adapter = { type = "http", addr = ... }',
    ),
    (
        "tx-signer",
        GOOD + '\n[[tx_signer]]\nchain_id = "osmosis-1"\nschema = "s.toml"\naccount_number = 1\n',
        'top level: key "tx_signer": tmkms\'s transaction signer ([[tx_signer]]) was removed in '
        "tmkms v0.13 and is not supported: remove the section and sign transactions with a "
        "separate tool",
    ),
    (
        "http-server",
        GOOD + '\n[http_server]\nbind_address = "127.0.0.1"\nport = 8080\n',
        'top level: key "http_server": tmkms\'s HTTP API for adding chains at runtime (no '
        "authentication, open to any web page) is not supported: add the [[chain]], provider "
        "and [[validator]] sections to this file and reload (systemctl reload, or kill -HUP the "
        "tmkms process)",
    ),
    (
        "prometheus-section",
        GOOD + '\n[prometheus]\nbind_address = "0.0.0.0:9100"\n',
        'top level: key "prometheus": not supported: write [metrics] with bind_address = '
        '"host:port" instead',
    ),
    (
        "protocol-v0.33",
        GOOD.replace('protocol_version = "v0.34"', 'protocol_version = "v0.33"'),
        f'{VALIDATOR_LABEL}: key "protocol_version": "v0.33": Tendermint v0.33 speaks an older '
        "privval protocol that this KMS does not implement (tmkms dropped it in v0.15): "
        "upgrade the node to v0.34 or newer, or keep tmkms v0.14 for it",
    ),
    (
        "protocol-legacy",
        GOOD.replace('protocol_version = "v0.34"', 'protocol_version = "legacy"'),
        f'{VALIDATOR_LABEL}: key "protocol_version": "legacy": the legacy (Tendermint v0.32 and '
        "older) privval protocol is not supported (tmkms dropped it in v0.13): upgrade the "
        "node to v0.34 or newer",
    ),
    (
        "metrics-both-names",
        GOOD + '\n[metrics]\nbind_address = "127.0.0.1:1"\nladdr = "127.0.0.1:2"\n',
        '[metrics]: key "laddr": give only one of bind_address and laddr (laddr is an alias of '
        "bind_address)",
    ),
    (
        "metrics-no-address",
        GOOD + "\n[metrics]\n",
        '[metrics]: key "bind_address": missing required key (host:port such as 127.0.0.1:9181)',
    ),
    (
        "metrics-bad-bind-address",
        GOOD + '\n[metrics]\nbind_address = "localhost"\n',
        '[metrics]: key "bind_address": expected host:port such as 127.0.0.1:9181, got string '
        '"localhost"',
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_tmkms_keys_say_what_to_do(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def test_good_base_config_loads(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD)
    assert config.metrics is None  # type: ignore[attr-defined]


# Every section/key of tmkms's config structs (src/config/*.rs of tmkms v0.15 and the
# `[metrics]` of its Prometheus pull request), with a value to try. Each must either load or
# be refused with something better than "unknown key".
TMKMS_KEYS: list[tuple[str, str, str]] = [
    ("[[chain]]", "id", ""),
    ("[[chain]]", "key_format", ""),
    ("[[chain]]", "sign_extensions", "sign_extensions = false"),
    ("[[chain]]", "state_file", 'state_file = "/tmp/x.json"'),
    ("[[chain]]", "state_hook", 'state_hook = { cmd = ["/bin/true"], fail_closed = false }'),
    ("[[chain]]", "state_hook.timeout_secs", 'state_hook = { cmd = ["x"], timeout_secs = 5 }'),
    ("[[validator]]", "addr", ""),
    ("[[validator]]", "chain_id", ""),
    ("[[validator]]", "reconnect", "reconnect = true"),
    ("[[validator]]", "timeout", "timeout = 10"),
    ("[[validator]]", "secret_key", ""),
    ("[[validator]]", "max_height", 'max_height = "10"'),
    ("[[validator]]", "protocol_version", 'protocol_version = "v0.38"'),
    ("[[providers.softsign]]", "chain_ids", ""),
    ("[[providers.softsign]]", "key_type", 'key_type = "consensus"'),
    ("[[providers.softsign]]", "key_format", 'key_format = "base64"'),
    ("[[providers.softsign]]", "path", ""),
    ("[[providers.yubihsm]]", "adapter.usb", 'adapter = { type = "usb", timeout_ms = 500 }'),
    ("[[providers.yubihsm]]", "auth.password", 'auth = { key = 1, password = "pw" }'),
    ("[[providers.yubihsm]]", "connector_server", 'connector_server = { laddr = "tcp://x:1" }'),
    ("[[providers.ledgertm]]", "chain_ids", 'chain_ids = ["osmosis-1"]'),
    ("[[providers.fortanixdsm]]", "api_endpoint", 'api_endpoint = "https://x"'),
    ("[metrics]", "bind_address", 'bind_address = "127.0.0.1:3333"'),
]


def _with_key(header: str, line: str) -> str:
    """GOOD with ``line`` in the first ``header`` section (a new section if GOOD has none)."""
    if not line:
        return GOOD
    key = line.split("=", 1)[0].strip()
    if f"{header}\n" not in GOOD:
        return GOOD + f"\n{header}\n{line}\n"
    head, _, rest = GOOD.partition(f"{header}\n")
    # drop the key if the section already sets it, then add ours
    body, sep, tail = rest.partition("\n\n")
    body = "\n".join(ln for ln in body.split("\n") if not ln.startswith(f"{key} "))
    return f"{head}{header}\n{body}\n{line}{sep}{tail}"


@pytest.mark.parametrize(
    ("header", "key", "line"), TMKMS_KEYS, ids=[f"{h}{k}" for h, k, _ in TMKMS_KEYS]
)
def test_every_tmkms_key_is_understood_or_refused_with_advice(
    tmp_path: Path, header: str, key: str, line: str
) -> None:
    text = _with_key(header, line)
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert "unknown key" not in message, message
        assert re.search(r"not supported|removed", message), message
        assert re.search(r"\buse\b|instead|keep|upgrade|remove", message), message


# --- state files -------------------------------------------------------------------------------


def cometbft_state(chain_id: str, height: int, round_: int, key: SigningKey) -> tuple[str, bytes]:
    """What a node's file signer leaves after a precommit: (the JSON text, the block hash)."""
    block = random_block_id(random.Random(height))
    vote = make_vote(SignedMsgType.PRECOMMIT, height, round_, block)
    sign_bytes = vote_sign_bytes(chain_id, vote)
    doc = {
        "height": str(height),
        "round": round_,
        "step": 3,
        "signature": base64.b64encode(key.sign(sign_bytes).signature).decode(),
        "signbytes": sign_bytes.hex().upper(),
    }
    return json.dumps(doc, indent=2), block.hash


@pytest.mark.parametrize(
    "text",
    [
        '{"height":"0","round":0,"step":0}',  # LoadOrGenFilePV's initial state
        '{"height":"12","round":1,"step":2}',  # signed, but signbytes omitted (empty)
        '{"height":"12","round":"1","step":2,"signbytes":"00"}',
        '{"height":"12","step":2,"signature":"AAAA"}',
    ],
)
def test_a_cometbft_state_is_named_with_the_way_out(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_state(text)
    assert str(caught.value) == COMETBFT_STATE_FILE
    assert "priv_validator_state.json" in COMETBFT_STATE_FILE
    assert "tmkms state import" in COMETBFT_STATE_FILE


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"height":"12","round":"1","step":2}', "missing key 'block_id'"),
        ('{"height":"12","round":true,"step":2}', "missing key 'block_id'"),
        ('{"round":"0","step":0,"block_id":null}', "missing key 'height'"),
    ],
)
def test_a_damaged_tmkms_state_is_not_taken_for_cometbft(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_state(text)


def test_tmkms_state_files_still_parse() -> None:
    state = SignState(7, 2, 1, BlockRef(hash=bytes(range(32)), parts_total=3, parts_hash=bytes(32)))
    assert parse_state(format_state(state)) == state
    nil_block = '{"height":"7","round":"0","step":0,"block_id":null}'
    assert parse_state(nil_block) == SignState(7, 0, 0, BlockRef.NIL)


def kms_home(tmp_path: Path, chain: str, state_file: Path, extra: str = "") -> Path:
    write_key(tmp_path / "secrets" / f"{chain}.key", SigningKey.generate())
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir(exist_ok=True)
    config = tmp_path / "tmkms.toml"
    config.write_text(
        chain_toml(chain, tmp_path).replace(
            f'state_file = "{tmp_path}/state/{chain}.json"', f'state_file = "{state_file}"'
        )
        + validator_toml(chain, f"tcp://127.0.0.1:{free_tcp_port()}", tmp_path, "v0.38")
        + extra
    )
    return config


def shown_state(config: Path) -> dict[str, object]:
    done = run_tmkms("state", "show", "-c", config, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (chain,) = json.loads(done.stdout)["chains"]
    assert isinstance(chain, dict)
    return chain


async def test_start_on_a_node_state_file_explains_and_the_advice_works(tmp_path: Path) -> None:
    """The guide's mistake: the node's priv_validator_state.json copied to state_file.

    `tmkms start` stops with one line naming the file, what it is and `tmkms state import`;
    both ways it offers (a state file of the KMS's own, or --force in place) then work.
    """
    chain = "osmo-test-5"
    node_file = tmp_path / "node" / "data" / "priv_validator_state.json"
    node_file.parent.mkdir(parents=True)
    text, block_hash = cometbft_state(chain, 3_400_000, 1, SigningKey.generate())
    node_file.write_text(text)
    copied = tmp_path / "state" / "priv_validator_state.json"
    copied.parent.mkdir()
    copied.write_text(text)
    config = kms_home(tmp_path, chain, copied)
    with trio.fail_after(60):
        async with tmkms_start(config) as kms:
            assert await kms.wait() == 4
    errors = kms.matching(r"^error: ")
    assert errors == [f"error: cannot parse state file {copied}: {COMETBFT_STATE_FILE}"]
    assert not kms.matching("missing key")
    assert copied.read_text() == text  # nothing was written over it

    # Way 1: a state file of the KMS's own, filled from the node's file.
    own = tmp_path / "state" / f"{chain}.json"
    config.write_text(config.read_text().replace(str(copied), str(own)))
    done = run_tmkms("state", "import", "-c", config, chain, node_file)
    assert done.returncode == 0, done.stdout + done.stderr
    state = shown_state(config)
    assert (state["height"], state["round"], state["step"]) == (3_400_000, 1, 2)
    assert state["block_id"]["hash"] == block_hash.hex().upper()  # type: ignore[index]
    assert node_file.read_text() == text  # the node's file is only read

    # Way 2: the copy converted in place (--force: its current content is unreadable).
    config.write_text(config.read_text().replace(str(own), str(copied)))
    done = run_tmkms("state", "import", "-c", config, chain, copied)
    assert done.returncode == 4 and "--force" in done.stderr
    done = run_tmkms("state", "import", "--force", "-c", config, chain, copied)
    assert done.returncode == 0, done.stdout + done.stderr
    assert parse_state(copied.read_bytes()) == parse_state(own.read_bytes())


async def test_tmkms_metrics_bind_address_serves_metrics_there(tmp_path: Path) -> None:
    """A config carried over from tmkms with `[metrics] bind_address` starts and serves."""
    port = free_tcp_port()
    chain = "bind-1"
    config = kms_home(
        tmp_path,
        chain,
        tmp_path / "state" / f"{chain}.json",
        f'\n[metrics]\nbind_address = "localhost:{port}"\n',
    )
    with trio.fail_after(60):
        async with tmkms_start(config) as kms:
            base = await metrics_base(kms)
            assert base.endswith(f":{port}")
            status, content_type, body = await http_get(f"http://localhost:{port}/metrics")
            assert status == 200 and content_type.startswith("text/plain")
            assert re.search(rb'^tmkms_validator_connected\{chain_id="bind-1"', body, re.M)
            assert b"tmkms_build_info{" in body
