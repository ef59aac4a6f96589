"""The `tmkms` command line, in-process (main()) and as a real process (python -m kms)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import sys
import types
from pathlib import Path

import pytest
from nacl.signing import SigningKey

import kms
import kms.commands
from kms import __version__
from kms.cli import exit_code_for, main
from kms.config import KmsConfig, load_config
from kms.errors import (
    ConfigError,
    DoubleSignError,
    HandshakeError,
    KeyFileError,
    KmsError,
    ProtocolError,
    SignerError,
    SigningRefused,
    StateError,
)
from kms.keys import load_ed25519_key, load_secp256k1_key, read_base64_secret
from tests.support import REPO
from tests.support.files import mode
from tests.support.kmsproc import run_tmkms

LOG_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def pvk_json(seed: bytes) -> str:
    """A priv_validator_key.json as CometBFT writes it (built here independently)."""
    public = bytes(SigningKey(seed).verify_key)
    return json.dumps(
        {
            "address": hashlib.sha256(public).digest()[:20].hex().upper(),
            "pub_key": {
                "type": "tendermint/PubKeyEd25519",
                "value": base64.b64encode(public).decode(),
            },
            "priv_key": {
                "type": "tendermint/PrivKeyEd25519",
                "value": base64.b64encode(seed + public).decode(),
            },
        },
        indent=2,
    )


# --- as a process -------------------------------------------------------------------------


def test_no_arguments_prints_usage_and_exits_2() -> None:
    result = run_tmkms()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: tmkms")
    for command in ("init", "softsign", "start", "version"):
        assert command in result.stderr
    assert result.stdout == ""


def test_version() -> None:
    result = run_tmkms("version")
    assert (result.returncode, result.stdout) == (0, f"{__version__}\n")
    assert run_tmkms("--version").stdout == f"{__version__}\n"


def test_usage_errors_exit_2() -> None:
    assert run_tmkms("frobnicate").returncode == 2
    assert run_tmkms("softsign").returncode == 2
    assert run_tmkms("softsign", "keygen", "-t", "rsa", "/tmp/x").returncode == 2
    assert run_tmkms("init").returncode == 2


def test_seed_guide_flow(tmp_path: Path) -> None:
    """The Osmosis guide's steps, in order, with only the paths changed."""
    home = tmp_path / "root" / "kms" / "osmosis"
    home.mkdir(parents=True)
    result = run_tmkms("init", str(home))
    assert result.returncode == 0, result.stderr
    assert f"Generated KMS configuration: {home}/tmkms.toml" in result.stderr
    assert f"Generated Secret Connection key: {home}/secrets/kms-identity.key" in result.stderr

    conn_key = home / "secrets" / "secret_connection_key"
    result = run_tmkms("softsign", "keygen", str(conn_key))
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"   Generated consensus (Ed25519) private key at: {conn_key}\n"
    assert len(read_base64_secret(conn_key)) == 32 and mode(conn_key) == 0o600

    seed = os.urandom(32)
    (home / "secrets" / "priv_validator_key.json").write_text(pvk_json(seed))
    out_key = home / "secrets" / "priv_validator_key"
    result = run_tmkms(
        "softsign", "import", str(home / "secrets/priv_validator_key.json"), str(out_key)
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"{LOG_LINE}  INFO tmkms::commands::softsign::import: Imported Ed25519 private key "
        rf"to {re.escape(str(out_key))}\n",
        result.stdout,
    )
    assert bytes(load_ed25519_key(out_key)) == seed and mode(out_key) == 0o600

    # step 10: edit tmkms.toml the way the guide shows
    config = home / "tmkms.toml"
    config.write_text(
        (REPO / "fixtures" / "tmkms-osmosis-guide.toml")
        .read_text()
        .replace("/root/kms/osmosis", str(home))
    )
    loaded = load_config(config)
    assert loaded.softsign[0].path == out_key
    assert loaded.validators[0].secret_key == conn_key


def test_init_layout_and_modes(tmp_path: Path) -> None:
    home = tmp_path / "kms"
    result = run_tmkms("init", "-n", "osmosis,juno", str(home))
    assert result.returncode == 0, result.stderr
    assert f"    Creating {home}" in result.stderr
    assert sorted(p.name for p in home.iterdir()) == ["schema", "secrets", "state", "tmkms.toml"]
    assert mode(home / "secrets") == 0o700
    identity = home / "secrets" / "kms-identity.key"
    assert mode(identity) == 0o600
    assert len(read_base64_secret(identity)) == 32
    config = load_config(home / "tmkms.toml")
    assert [c.id for c in config.chains] == ["osmosis-1", "juno-1"]
    assert all(v.secret_key == identity for v in config.validators)


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    home = tmp_path / "kms"
    assert run_tmkms("init", str(home)).returncode == 0
    identity = home / "secrets" / "kms-identity.key"
    before = identity.read_bytes(), (home / "tmkms.toml").read_text()
    (home / "tmkms.toml").write_text("# my edits\n")

    result = run_tmkms("init", "-n", "osmosis", str(home))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {home}/tmkms.toml: already exists; refusing to overwrite (use --force)\n"
    )
    assert (home / "tmkms.toml").read_text() == "# my edits\n"
    assert identity.read_bytes() == before[0]

    result = run_tmkms("init", "--force", "-n", "osmosis", str(home))
    assert result.returncode == 0, result.stderr
    assert identity.read_bytes() != before[0]
    assert [c.id for c in load_config(home / "tmkms.toml").chains] == ["osmosis-1"]


def test_init_unknown_network(tmp_path: Path) -> None:
    result = run_tmkms("init", "-n", "osmosis,terra", str(tmp_path / "kms"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown network 'terra' (known networks: cosmoshub,")
    assert not (tmp_path / "kms").exists()


def test_keygen_account_and_refusal(tmp_path: Path) -> None:
    path = tmp_path / "account.key"
    result = run_tmkms("softsign", "keygen", "-t", "account", str(path))
    assert result.returncode == 0
    assert result.stderr == f"   Generated account (secp256k1) private key at: {path}\n"
    scalar = load_secp256k1_key(path)
    result = run_tmkms("softsign", "keygen", str(path))
    assert result.returncode == 3
    assert result.stderr == f"error: {path}: refusing to overwrite an existing file (use --force)\n"
    assert load_secp256k1_key(path) == scalar
    assert run_tmkms("softsign", "keygen", "--force", str(path)).returncode == 0
    assert len(read_base64_secret(path)) == 32
    assert bytes(load_ed25519_key(path)) != scalar


def test_import_rejects_mismatched_json(tmp_path: Path) -> None:
    doc = json.loads(pvk_json(os.urandom(32)))
    doc["pub_key"]["value"] = base64.b64encode(bytes(SigningKey(bytes(32)).verify_key)).decode()
    source = tmp_path / "pvk.json"
    source.write_text(json.dumps(doc))
    result = run_tmkms("softsign", "import", str(source), str(tmp_path / "out"))
    assert result.returncode == 3
    assert result.stderr == (
        f"error: {source}: keypair mismatch: public key does not match the seed\n"
    )
    assert not (tmp_path / "out").exists()


def test_start_with_bad_config_is_one_line_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "tmkms.toml"
    config.write_text(
        (REPO / "fixtures" / "tmkms-osmosis-guide.toml")
        .read_text()
        .replace('protocol_version = "v0.34"', 'protocol_version = "v9"')
    )
    expected = (
        f'error: {config}: [[validator]] #1 (chain_id = "osmosis-1"): key "protocol_version": '
        'unknown protocol version "v9" (expected one of "v0.34", "v0.37", "v0.38", "v1", '
        '"celestia")\n'
    )
    for args, env, cwd in (
        (["start", "-c", str(config)], None, None),
        (["start"], {"TMKMS_CONFIG_FILE": str(config)}, None),
        (["start"], None, tmp_path),
    ):
        result = run_tmkms(*args, env=env, cwd=cwd)
        assert (result.returncode, result.stderr) == (1, expected)
        assert "Traceback" not in result.stdout + result.stderr


def test_start_without_any_config(tmp_path: Path) -> None:
    result = run_tmkms("start", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {tmp_path}/tmkms.toml: cannot read config file: No such file or directory\n"
    )


# --- in-process ---------------------------------------------------------------------------


def test_main_without_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: tmkms")


def test_start_hands_the_config_to_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[KmsConfig, bool]] = []

    def run(config: KmsConfig, *, verbose: bool = False, reread: object = None) -> int:
        assert callable(reread)  # SIGHUP reads the same file again
        calls.append((config, verbose))
        logging.getLogger("kms.commands.start").info("tmkms %s starting up...", __version__)
        logging.getLogger("kms.session").debug("debug is on")
        return 7

    fake = types.ModuleType("kms.service")
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kms.service", fake)
    monkeypatch.setattr(kms, "service", fake, raising=False)
    config_path = REPO / "fixtures" / "tmkms-osmosis-guide.toml"

    assert main(["start", "-c", str(config_path), "-v", "--log-format", "json"]) == 7
    ((config, verbose),) = calls
    assert config == load_config(config_path)
    assert verbose is True
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["target"], x["message"]) for x in lines] == [
        ("tmkms::commands::start", f"tmkms {__version__} starting up..."),
        ("tmkms::session", "debug is on"),
    ]

    calls.clear()
    assert main(["start", "-c", str(config_path)]) == 7
    assert calls[0][1] is False
    out = capsys.readouterr().out
    assert re.fullmatch(
        rf"{LOG_LINE}  INFO tmkms::commands::start: tmkms {re.escape(__version__)} "
        r"starting up\.\.\.\n",
        out,
    )


def test_demo(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = types.ModuleType("kms.sim.demo")
    fake.main = lambda: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kms.sim.demo", fake)
    assert main(["demo"]) == 0
    monkeypatch.setitem(sys.modules, "kms.sim.demo", None)  # as if not installed
    assert main(["demo"]) == 1
    assert capsys.readouterr().err.startswith("error: the demo is not available")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("x"), 1),
        (KeyFileError("x"), 3),
        (StateError("x"), 4),
        (ProtocolError("x"), 5),
        (HandshakeError("x"), 5),
        (SignerError("x"), 6),
        (SigningRefused("x"), 7),
        (DoubleSignError("x"), 7),
        (KmsError("x"), 1),
    ],
)
def test_exit_codes(error: KmsError, code: int) -> None:
    assert exit_code_for(error) == code


PLUGIN = """
import argparse
from kms.errors import StateError

def add_commands(subparsers):
    group = subparsers.add_parser("zz-plugin", help="a plugin's tools")
    group.add_argument("what")
    group.set_defaults(handler=run)

def run(args: argparse.Namespace) -> int:
    if args.what == "fail":
        raise StateError("/var/lib/x.json: corrupt\\nsecond line")
    print("plugin", args.what)
    return 0
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An extra directory searched for kms.commands modules, as another team's module."""
    monkeypatch.setattr(kms.commands, "__path__", [*kms.commands.__path__, str(tmp_path)])
    for name in ("zz_state", "zz_broken"):
        monkeypatch.delitem(sys.modules, f"kms.commands.{name}", raising=False)
    return tmp_path


def test_command_modules_are_discovered(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_dir / "zz_state.py").write_text(PLUGIN)
    assert main(["zz-plugin", "show"]) == 0
    assert capsys.readouterr().out == "plugin show\n"
    assert main(["zz-plugin", "fail"]) == 4
    assert capsys.readouterr().err == "error: /var/lib/x.json: corrupt second line\n"


def test_a_broken_command_module_does_not_break_the_others(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_dir / "zz_broken.py").write_text("import no_such_module_here\n")
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"{__version__}\n"
    assert main(["zz_broken", "anything", "--x"]) == 1
    assert capsys.readouterr().err == (
        "error: the `zz_broken` commands are unavailable: ModuleNotFoundError: "
        "No module named 'no_such_module_here'\n"
    )
