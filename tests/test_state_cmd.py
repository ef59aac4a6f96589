"""`tmkms state show|import|set` against real CometBFT and tmkms state files (in-process CLI)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kms.chain.state import BlockRef, SignState
from kms.chain.stateformat import format_state, parse_state
from kms.cli import main
from kms.lock import lock_path_for, lock_state_files
from tests.support.vectors import load_vectors, vector_checked

CHAINS = ("alpha-1", "beta-2")


pytestmark = pytest.mark.usefixtures("restore_root_logger")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A KMS home with two chains (no keys are needed by the state commands)."""
    (tmp_path / "state").mkdir()
    text = ""
    for chain in CHAINS:
        text += (
            f'[[chain]]\nid = "{chain}"\nkey_format = {{ type = "hex" }}\n'
            f'state_file = "{tmp_path}/state/{chain}.json"\n\n'
        )
    (tmp_path / "tmkms.toml").write_text(text)
    return tmp_path


def run(home: Path, *args: str) -> int:
    return main(["state", *args[:1], "-c", str(home / "tmkms.toml"), *args[1:]])


def state_path(home: Path, chain: str = "alpha-1") -> Path:
    return home / "state" / f"{chain}.json"


def write_state(home: Path, state: SignState, chain: str = "alpha-1") -> bytes:
    data = format_state(state)
    state_path(home, chain).write_bytes(data)
    return data


BLOCK_A = BlockRef(hash=bytes(range(32)), parts_total=1, parts_hash=bytes(32))
BLOCK_B = BlockRef(hash=bytes(range(1, 33)), parts_total=2, parts_hash=bytes(range(32)))


def cometbft_examples() -> list[dict[str, Any]]:
    return list(load_vectors("filepv_state.json")["examples"])


def test_import_every_cometbft_vector_into_a_fresh_home(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each real priv_validator_state.json lands as tmkms's file, steps mapped, block decoded."""
    examples = cometbft_examples()
    expected = {
        (0, 0, 0): BlockRef.NIL,  # "none": nothing signed at height 0
        (1, 1, 0): BlockRef.NIL,  # propose (1) -> 0, no sign bytes: nil
        (3, 2, 2): BlockRef(  # precommit (3) -> 2, block from the sign bytes
            hash=bytes.fromhex("8B01023386C371778ECB6368573E539AFC3CC860EC3A2F614E54FE5652F4FC80"),
            parts_total=1_000_000,
            parts_hash=bytes.fromhex(
                "72DB3D959635DFF1BB567BEDAA70573392C5159666A3F8CAF11E413AAC52207A"
            ),
        ),
    }
    assert len(examples) == len(expected)
    for example in examples:
        state_path(home).unlink(missing_ok=True)
        source = tmp_path / "priv_validator_state.json"
        source.write_text(json.dumps(example["json"], indent=2))
        assert run(home, "import", "alpha-1", str(source)) == 0
        written = parse_state(state_path(home).read_bytes())
        assert written.block == expected[written.hrs], example["name"]
        doc = example["json"]
        assert written.height == int(doc["height"]) and written.round == doc["round"]
        assert written.step == max(doc["step"] - 1, 0)
        assert state_path(home).read_bytes() == format_state(written)  # tmkms's exact bytes
        out = capsys.readouterr().out
        assert "read cometbft state from" in out
        assert "before: none (no state file)" in out
        assert f"after:  {written}" in out
        vector_checked("filepv_state.json")


def test_import_a_tmkms_state_file_is_detected(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "other_kms_state.json"
    source.write_bytes(format_state(SignState(77, 3, 1, BLOCK_A)))
    write_state(home, SignState(5, 0, 2, BLOCK_B))
    assert run(home, "import", "alpha-1", str(source)) == 0
    assert parse_state(state_path(home).read_bytes()) == SignState(77, 3, 1, BLOCK_A)
    out = capsys.readouterr().out
    assert "read tmkms state from" in out
    assert "before: 5/0/2 Precommit, block 0102" in out
    assert "after:  77/3/1 Prevote, block 000102" in out
    # the other chain is untouched
    assert not state_path(home, "beta-2").exists()


def test_import_never_lowers_without_force(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precommit = next(e for e in cometbft_examples() if e["json"]["step"] == 3)
    vector_checked("filepv_state.json")
    source = tmp_path / "priv_validator_state.json"
    source.write_text(json.dumps(precommit["json"]))  # 3/2/2
    for current in (SignState(10, 0, 0), SignState(3, 2, 2, BLOCK_B), SignState(3, 3, 0)):
        before = write_state(home, current)
        assert run(home, "import", "alpha-1", str(source)) == 4
        err = capsys.readouterr().err
        assert err.startswith("error: refusing to ")
        assert str(current) in err
        assert state_path(home).read_bytes() == before
    assert run(home, "import", "alpha-1", str(source), "--force") == 0
    assert parse_state(state_path(home).read_bytes()).hrs == (3, 2, 2)
    out = capsys.readouterr().out
    assert "before: 3/3/0 Proposal, block <nil>" in out and "after:  3/2/2 Precommit" in out


def test_import_of_the_same_state_changes_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = SignState(9, 1, 1, BLOCK_A)
    data = write_state(home, state)
    os.utime(state_path(home), (1_000_000, 1_000_000))
    source = tmp_path / "same.json"
    source.write_bytes(data)
    assert run(home, "import", "alpha-1", str(source)) == 0
    assert "after:  unchanged" in capsys.readouterr().out
    assert state_path(home).stat().st_mtime == 1_000_000


def test_unreadable_state_is_replaced_only_with_force(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path(home).write_text('{"height":"12"')  # truncated
    source = tmp_path / "pvs.json"
    source.write_text('{"height":"20","round":0,"step":2}')
    assert run(home, "import", "alpha-1", str(source)) == 4
    assert "cannot parse state file" in capsys.readouterr().err
    assert run(home, "import", "alpha-1", str(source), "--force") == 0
    assert parse_state(state_path(home).read_bytes()) == SignState(20, 0, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not JSON"),
        ('{"height":"1","round":0,"step":7}', "step must be 0-3"),
        ('{"height":"1","round":"0","step":9,"block_id":null}', "is not a tmkms state file"),
        (
            # sign bytes for 3/2/precommit, but the file claims height 4
            '{"height":"4","round":2,"step":3,"signbytes":"'
            "770802110300000000000000190200000000000000224A0A208B01023386C371778ECB6368573E539"
            "AFC3CC860EC3A2F614E54FE5652F4FC80122608C0843D122072DB3D959635DFF1BB567BEDAA705733"
            '92C5159666A3F8CAF11E413AAC52207A2A0608F49A8DED05320D746573745F636861696E5F6964"}',
            "signbytes of priv_validator_state.json are for h/r/s 3/2/2",
        ),
    ],
)
def test_bad_import_files_are_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    source = tmp_path / "input.json"
    source.write_text(text)
    assert run(home, "import", "alpha-1", str(source)) == 4
    assert message in capsys.readouterr().err
    assert not state_path(home).exists()


def test_set_only_raises(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(home, "set", "beta-2", "100") == 0
    assert parse_state(state_path(home, "beta-2").read_bytes()) == SignState(100, 0, 0)
    assert "before: none (no state file)" in capsys.readouterr().out
    write_state(home, SignState(100, 4, 2, BLOCK_A), "beta-2")
    for height in ("100", "99"):
        assert run(home, "set", "beta-2", height) == 4
        assert "only raises it (to a height above 100)" in capsys.readouterr().err
    assert parse_state(state_path(home, "beta-2").read_bytes()) == SignState(100, 4, 2, BLOCK_A)
    assert run(home, "set", "beta-2", "101") == 0
    out = capsys.readouterr().out
    assert "before: 100/4/2 Precommit" in out and "after:  101/0/0 Proposal, block <nil>" in out
    assert run(home, "set", "beta-2", "-3") == 2  # usage error
    assert run(home, "set", "gamma-3", "5") == 1
    assert "no [[chain]] with id 'gamma-3' (configured: alpha-1, beta-2)" in capsys.readouterr().err


def test_show_text_and_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_state(home, SignState(3399914, 0, 2, BLOCK_A))
    assert run(home, "show") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"alpha-1: 3399914/0/2 Precommit, block {BLOCK_A.hash.hex().upper()}"
    assert out[1].strip() == str(state_path(home))
    assert out[2] == "beta-2: nothing signed yet (no state file)"
    assert run(home, "show", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    alpha, beta = doc["chains"]
    assert alpha == {
        "chain_id": "alpha-1",
        "state_file": str(state_path(home)),
        "exists": True,
        "locked_by_pid": None,
        "height": 3399914,
        "round": 0,
        "step": 2,
        "step_name": "Precommit",
        "block_id": {
            "hash": BLOCK_A.hash.hex().upper(),
            "parts": {"total": 1, "hash": "00" * 32},
        },
    }
    assert beta["exists"] is False and "height" not in beta


def test_show_reports_a_corrupt_file_and_a_held_lock(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path(home, "beta-2").write_text("")
    write_state(home, SignState(5, 0, 1))
    with lock_state_files([state_path(home)], purpose="test"):
        assert run(home, "show") == 4
        out = capsys.readouterr().out
        assert f"(in use by a running tmkms start, pid {os.getpid()})" in out
        assert "beta-2: error: cannot parse state file" in out
    # released: the lock file stays, but nobody holds it
    assert lock_path_for(state_path(home)).exists()
    assert run(home, "show", "--json") == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["chains"][0]["locked_by_pid"] is None
    assert "cannot parse state file" in doc["chains"][1]["error"]


def test_changes_refuse_while_the_lock_is_held(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = write_state(home, SignState(5, 0, 1))
    source = tmp_path / "pvs.json"
    source.write_text('{"height":"50","round":0,"step":1}')
    with lock_state_files([state_path(home)], purpose="test"):
        assert run(home, "set", "alpha-1", "60") == 4
        err = capsys.readouterr().err
        assert f"is in use by process {os.getpid()}" in err
        assert "stop it before changing the state" in err
        assert run(home, "import", "alpha-1", str(source), "--force") == 4
        assert "is in use by process" in capsys.readouterr().err
        assert state_path(home).read_bytes() == before
        assert run(home, "set", "beta-2", "60") == 0  # another chain's file is free
    assert run(home, "set", "alpha-1", "60") == 0
