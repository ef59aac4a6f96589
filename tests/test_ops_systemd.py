"""contrib/tmkms.service agrees with the program it starts, and systemd accepts it."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from kms.cli import build_parser, exit_code_for
from kms.config import load_config
from kms.config.template import parse_networks, render_config
from kms.errors import ConfigError, KeyFileError, StateError
from kms.sdnotify import watchdog_interval

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "tmkms.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_restart_policy_matches_the_exit_codes() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    prevented = {int(code) for code in service["RestartPreventExitStatus"].split()}
    assert prevented == {exit_code_for(ConfigError("x")), exit_code_for(KeyFileError("x"))}
    # a state lock held by a KMS still exiting is worth retrying
    assert exit_code_for(StateError("x")) not in prevented
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"


def test_exec_start_is_a_valid_tmkms_start_and_the_paths_agree(tmp_path: Path) -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "tmkms"
    args = build_parser().parse_args(argv[1:])
    assert args.handler.__module__ == "kms.commands.start"
    config_path = Path(args.config)
    home = Path(service["WorkingDirectory"])
    assert config_path.parent == home
    # The state files `tmkms init` puts in that home are all under ReadWritePaths.
    (tmp_path / "state").mkdir()
    config_file = tmp_path / "tmkms.toml"
    config_file.write_text(render_config(home, parse_networks("osmosis")))
    config = load_config(config_file)
    writable = [Path(p) for p in service["ReadWritePaths"].split()]
    for chain in config.chains:
        assert any(chain.state_file.parent == folder for folder in writable), chain.state_file


def test_hardening_and_watchdog() -> None:
    service = unit()["Service"]
    for key, expected in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "LimitCORE": "0",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert service[key] == expected, key
    watchdog = float(service["WatchdogSec"].removesuffix("s"))
    assert watchdog_interval({"WATCHDOG_USEC": str(int(watchdog * 1e6))}) == watchdog / 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    executable = shlex.split(unit()["Service"]["ExecStart"])[0]
    copy = tmp_path / "tmkms-osmosis.service"
    text = text.replace(executable, shutil.which("true") or "/bin/true")
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    # and it does complain about a mistake, so the silence above means something
    copy.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "sometimes" in result.stderr  # systemd names the value it could not parse
