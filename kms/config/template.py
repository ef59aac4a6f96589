"""The tmkms.toml that `tmkms init` writes: a working starting point, one block per network.

Like tmkms's template: a ``[[chain]]`` with the network's real chain ID and bech32 prefixes,
a ``[[providers.softsign]]`` consensus key and a ``[[validator]]`` per network, with key and
state paths under KMS_HOME. It loads with :func:`kms.config.load_config` as written; the
operator then creates the keys and points ``addr`` at their node. tmkms's ``irishub``
(chain ID ``irishub``) and ``cosmoshub-3`` are out of date; the chain IDs here are current.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import attrs

from kms.protocol.version import ProtocolVersion


@attrs.frozen
class Network:
    """A network `tmkms init -n` knows: its name, chain ID, bech32 prefixes and title."""

    name: str
    chain_id: str
    account_key_prefix: str
    consensus_key_prefix: str
    title: str


NETWORKS: tuple[Network, ...] = (
    Network("cosmoshub", "cosmoshub-4", "cosmospub", "cosmosvalconspub", "Cosmos Hub"),
    Network("osmosis", "osmosis-1", "osmopub", "osmovalconspub", "Osmosis"),
    Network("irishub", "irishub-1", "iap", "icp", "IRISnet"),
    Network("sentinelhub", "sentinelhub-2", "sentpub", "sentvalconspub", "Sentinel"),
    Network("core", "core-1", "persistencepub", "persistencevalconspub", "Persistence"),
    Network("juno", "juno-1", "junopub", "junovalconspub", "Juno"),
    Network("akash", "akashnet-2", "akashpub", "akashvalconspub", "Akash"),
    Network("stargaze", "stargaze-1", "starspub", "starsvalconspub", "Stargaze"),
)
DEFAULT_NETWORK = "cosmoshub"
_ALIASES = {"persistence": "core"}
IDENTITY_KEY_NAME = "kms-identity.key"
EXAMPLE_VALIDATOR_ADDR = "tcp://deadbeefdeadbeefdeadbeefdeadbeefdeadbeef@example1.example.com:26658"


def parse_networks(text: str | None) -> list[Network]:
    """Networks named in a comma-separated ``-n`` value (by name or chain ID).

    None means the default (cosmoshub); ValueError lists the known networks otherwise.
    """
    if text is None:
        text = DEFAULT_NETWORK
    chosen: list[Network] = []
    for raw in text.split(","):
        name = _ALIASES.get(raw.strip(), raw.strip())
        match = [n for n in NETWORKS if name in (n.name, n.chain_id)]
        if not match:
            known = ", ".join(n.name for n in NETWORKS)
            raise ValueError(f"unknown network {raw.strip()!r} (known networks: {known})")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(text, ensure_ascii=False)


def render_config(kms_home: Path, networks: Sequence[Network]) -> str:
    """The tmkms.toml text for ``networks`` with paths under ``kms_home`` (an absolute path)."""
    home = Path(kms_home)
    out = ["# Tendermint KMS configuration file", "", "## Chain Configuration", ""]
    for net in networks:
        out += [
            f"### {net.title} Network",
            "",
            "[[chain]]",
            f"id = {toml_string(net.chain_id)}",
            f'key_format = {{ type = "bech32", account_key_prefix = '
            f"{toml_string(net.account_key_prefix)}, consensus_key_prefix = "
            f"{toml_string(net.consensus_key_prefix)} }}",
            f"state_file = {toml_string(str(home / 'state' / f'{net.chain_id}-consensus.json'))}",
            "",
        ]
    out += ["## Signing Provider Configuration", "", "### Software-based Signer Configuration", ""]
    for net in networks:
        key_path = home / "secrets" / f"{net.chain_id}-consensus.key"
        out += [
            "[[providers.softsign]]",
            f"chain_ids = [{toml_string(net.chain_id)}]",
            'key_type = "consensus"',
            f"path = {toml_string(str(key_path))}",
            "",
        ]
    out += [
        "## Validator Configuration",
        "",
        "# addr: the node's priv_validator_laddr; the 40-hex peer ID before @ pins its identity.",
        "# protocol_version: the node's CometBFT version: v0.34, v0.37, v0.38 or v1.",
        "",
    ]
    identity = home / "secrets" / IDENTITY_KEY_NAME
    for net in networks:
        out += [
            "[[validator]]",
            f"chain_id = {toml_string(net.chain_id)}",
            f"addr = {toml_string(EXAMPLE_VALIDATOR_ADDR)}",
            f"secret_key = {toml_string(str(identity))}",
            f"protocol_version = {toml_string(ProtocolVersion.V0_38.value)}",
            "reconnect = true",
            "",
        ]
    return "\n".join(out)
