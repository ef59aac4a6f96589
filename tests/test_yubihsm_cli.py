"""`tmkms yubihsm ...` as an operator runs it: real processes against the simulator process.

Each test starts `tmkms yubihsm simulator` on a free port and drives it with the commands of
tmkms's YubiHSM guide: setup, keys generate / list / export / import, test. What the commands
print is checked against what the device holds, read independently through the library.
`detect` needs the fake USB bus, which only exists inside a process, so it runs in-process.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from nacl.signing import SigningKey, VerifyKey
from yubihsm import YubiHsm
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, CAPABILITY, OBJECT
from yubihsm.exceptions import YubiHsmAuthenticationError
from yubihsm.objects import AsymmetricKey, AuthenticationKey, Opaque, WrapKey

from kms.cli import main
from kms.sim.yubihsm import YubiHsmDevice, fake_usb_devices
from providers.yubihsm.signers import read_public_key
from tests.support import REPO
from tests.support.kmsproc import TMKMS, run_tmkms, tmkms_env

SIMULATOR = [*TMKMS, "yubihsm", "simulator"]
README_PHRASE = (
    "double section release consider diet pilot flip shell mother alone what fantasy "
    "much answer lottery crew nut reopen stereo square popular addict just animal"
)


@attrs.define
class Simulator:
    """A `tmkms yubihsm simulator` process."""

    process: subprocess.Popen[str]
    url: str
    home: Path

    def config(self, name: str, key: int, password: str, extra: str = "") -> Path:
        """Write a tmkms.toml with this HSM and the given credentials."""
        path = self.home / name
        path.write_text(
            f"{extra}\n[[providers.yubihsm]]\n"
            f'adapter = {{ type = "http", addr = "{self.url.replace("http://", "tcp://")}" }}\n'
            f'auth = {{ key = {key}, password = "{password}" }}\n'
        )
        return path

    def session(self, key: int, password: str) -> AuthSession:
        return YubiHsm.connect(self.url).create_session_derived(key, password)


def start_simulator(home: Path, name: str) -> Simulator:
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [*SIMULATOR, "--laddr", "tcp://127.0.0.1:0", "--state", str(home / f"{name}.json")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=tmkms_env(),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    assert match, f"simulator did not start: {line!r}"
    return Simulator(process, match.group(1), home)


@pytest.fixture
def simulators(tmp_path: Path) -> Iterator[list[Simulator]]:
    """Start simulators on demand (``simulators.append(...)`` via :func:`start_simulator`)."""
    started: list[Simulator] = []
    yield started
    for sim in started:
        sim.process.terminate()
        sim.process.wait(timeout=20)
        assert sim.process.stdout is not None
        sim.process.stdout.close()


@pytest.fixture
def hsm(tmp_path: Path, simulators: list[Simulator]) -> Simulator:
    sim = start_simulator(tmp_path / "a", "hsm")
    simulators.append(sim)
    return sim


@attrs.frozen
class Provisioned:
    """What `setup` printed."""

    phrase: str
    passwords: dict[str, str]
    wrap_key: str
    serial: int


def parse_setup(stdout: str) -> Provisioned:
    words = re.findall(r"^    ((?:[a-z]+ ){11}[a-z]+)$", stdout, re.MULTILINE)
    assert len(words) == 2, stdout
    passwords = dict(re.findall(r"^- authkey 0x000\d \[(\w+)\]: +(\S+)$", stdout, re.MULTILINE))
    wrap = re.search(r"^- wrapkey 0x0001 \[primary\]: +([0-9a-f]{64})$", stdout, re.MULTILINE)
    serial = re.search(r"^- YubiHSM serial: (\d+)$", stdout, re.MULTILINE)
    assert wrap and serial and set(passwords) == {"operator", "auditor", "validator"}, stdout
    return Provisioned(" ".join(words), passwords, wrap.group(1), int(serial.group(1)))


def setup_hsm(sim: Simulator, stdin: str = "", *extra: str) -> Provisioned:
    config = sim.config("factory.toml", 1, "password")
    result = run_tmkms("yubihsm", "setup", "--yes", "-c", config, *extra, stdin=stdin)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success reinitialized YubiHSM (serial: " in result.stderr
    return parse_setup(result.stdout)


def test_setup_provisions_the_tmkms_layout(hsm: Simulator, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    secrets = setup_hsm(hsm, "", "-w", str(report))
    with pytest.raises(YubiHsmAuthenticationError):
        hsm.session(1, "password")  # the factory key is gone
    admin = hsm.session(1, secrets.phrase)
    objects = {(o.object_type, o.id) for o in admin.list_objects()}
    assert objects == {
        (OBJECT.AUTHENTICATION_KEY, 1),
        (OBJECT.AUTHENTICATION_KEY, 2),
        (OBJECT.AUTHENTICATION_KEY, 3),
        (OBJECT.AUTHENTICATION_KEY, 4),
        (OBJECT.WRAP_KEY, 1),
        (OBJECT.OPAQUE, 0xFFFE),
    }
    validator = AuthenticationKey(admin, 4).get_info()
    assert validator.domains == 1 and validator.delegated_capabilities == 0
    assert (
        validator.capabilities & CAPABILITY.SIGN_EDDSA
        and validator.capabilities & CAPABILITY.SIGN_ECDSA
    )
    assert not validator.capabilities & CAPABILITY.GENERATE_ASYMMETRIC_KEY
    assert AuthenticationKey(admin, 2).get_info().capabilities & CAPABILITY.EXPORT_WRAPPED
    assert AuthenticationKey(admin, 1).get_info().label.startswith("admin:")
    wrap = WrapKey(admin, 1).get_info()
    assert (wrap.algorithm, wrap.domains) == (ALGORITHM.AES256_CCM_WRAP, 0xFFFF)
    stored = json.loads(Opaque(admin, 0xFFFE).get())
    assert stored["device_serial_number"] == str(secrets.serial)
    assert json.loads(report.read_text())["uuid"] == stored["uuid"]
    for role, key_id in (("operator", 2), ("auditor", 3), ("validator", 4)):
        assert hsm.session(key_id, secrets.passwords[role]).sid is not None
    # print-only with the new admin credentials derives the same secrets and changes nothing
    config = hsm.config("admin.toml", 1, secrets.phrase)
    again = run_tmkms(
        "yubihsm", "setup", "--print-only", "--restore", "-c", config, stdin=secrets.phrase
    )
    assert again.returncode == 0, again.stderr
    assert "Below are all keys/passwords derived from your 24-word admin mnemonic:" in again.stdout
    assert secrets.passwords["validator"] in again.stdout and secrets.wrap_key in again.stdout
    assert hsm.session(1, secrets.phrase).sid is not None


def test_restore_prints_tmkms_readme_secrets(hsm: Simulator) -> None:
    config = hsm.config("factory.toml", 1, "password")
    result = run_tmkms("yubihsm", "setup", "-p", "-r", "-c", config, stdin=README_PHRASE + "\n")
    assert result.returncode == 0, result.stderr
    assert "Mnemonic phrase decoded/checksummed successfully!" in result.stdout
    lines = result.stdout.splitlines()
    assert (
        "- authkey 0x0002 [operator]:  kms-operator-password-1k02vtxh4ggxct5tngncc33rk9yy5yjhk"
        in lines
    )
    assert (
        "- authkey 0x0003 [auditor]:   kms-auditor-password-1s0ynq69ezavnqgq84p0rkhxvkqm54ks9"
        in lines
    )
    assert (
        "- authkey 0x0004 [validator]: kms-validator-password-1x4anf3n8vqkzm0klrwljhcx72sankcw0"
        in lines
    )
    assert (
        "- wrapkey 0x0001 [primary]:   21a6ca8cfd5dbe9c26320b5c4935ff1e63b9ab54e2dfe24f66677aba8852be13"
        in lines
    )
    assert (
        "    double section release consider diet pilot flip shell mother alone what fantasy"
        in lines
    )
    assert hsm.session(1, "password").sid is not None  # print-only erased nothing
    bad = run_tmkms("yubihsm", "setup", "-p", "-r", "-c", config, stdin="double section\n")
    assert bad.returncode == 1 and "couldn't decode mnemonic" in bad.stderr


def test_setup_asks_before_erasing(hsm: Simulator) -> None:
    config = hsm.config("factory.toml", 1, "password")
    result = run_tmkms("yubihsm", "setup", "-c", config, stdin="n\n")
    assert result.returncode == 1
    assert (
        "*** Are you SURE you want erase and reinitialize this HSM? (y/N): Aborting"
        in result.stdout
    )
    assert hsm.session(1, "password").sid is not None  # untouched


def test_generate_list_and_sign_with_the_listed_key(hsm: Simulator) -> None:
    secrets = setup_hsm(hsm)
    chain = (
        '[[chain]]\nid = "cosmoshub-4"\nkey_format = { type = "bech32", '
        'account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }\n'
    )
    keys = 'keys = [{ chain_ids = ["cosmoshub-4"], key = 1 }, { chain_ids = ["cosmoshub-4"], key = 2, type = "account" }]\n'
    operator = hsm.config("operator.toml", 2, secrets.passwords["operator"], chain)
    operator.write_text(operator.read_text() + keys)
    generated = run_tmkms(
        "yubihsm", "keys", "generate", "1", "-p", "cosmosvalconspub", "-c", operator
    )
    assert generated.returncode == 0, generated.stderr
    match = re.search(
        r"Generated consensus \(ed25519\) key 0x0001: (cosmosvalconspub1\w+)$",
        generated.stderr,
        re.MULTILINE,
    )
    assert match, generated.stderr
    account = run_tmkms("yubihsm", "keys", "generate", "0x2", "-t", "account", "-c", operator)
    assert account.returncode == 0, account.stderr
    assert "Generated account (secp256k1) key 0x0002: " in account.stderr
    plain = run_tmkms(
        "yubihsm", "keys", "generate", "3", "-l", "spare key", "--non-exportable", "-c", operator
    )
    assert plain.returncode == 0, plain.stderr
    hex_key = re.search(r"key 0x0003: ([0-9A-F]{64})$", plain.stderr, re.MULTILINE)
    assert hex_key, plain.stderr

    listing = run_tmkms("yubihsm", "keys", "list", "-c", operator)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == f"Listing keys in YubiHSM #{secrets.serial}:"
    assert lines[1] == f"- 0x0001: [cons] {match.group(1)}"
    assert re.fullmatch(r'   label: "cosmosvalconspub:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', lines[2])
    assert lines[3].startswith("- 0x0002: [acct] cosmospub1")
    assert lines[5] == f"- 0x0003: [cons] {hex_key.group(1)}"
    assert lines[6] == '   label: "spare key"'

    # The key keys list showed is the key the HSM signs with.
    validator = hsm.session(4, secrets.passwords["validator"])
    signature = AsymmetricKey(validator, 1).sign_eddsa(b"listed key")
    algorithm, raw = read_public_key(validator, 1)
    assert algorithm == ALGORITHM.EC_ED25519
    VerifyKey(raw).verify(b"listed key", signature)
    from kms.keys import bech32_decode

    assert bech32_decode(match.group(1))[1] == bytes.fromhex("1624de6420") + raw
    info = AsymmetricKey(validator, 3).get_info()
    assert not info.capabilities & CAPABILITY.EXPORTABLE_UNDER_WRAP

    again = run_tmkms("yubihsm", "keys", "generate", "1", "-c", operator)
    assert again.returncode == 6 and "couldn't generate key #1" in again.stderr
    assert "OBJECT_EXISTS" in again.stderr


def test_export_then_import_into_a_restored_hsm(
    tmp_path: Path, hsm: Simulator, simulators: list[Simulator]
) -> None:
    secrets = setup_hsm(hsm)
    operator = hsm.config("operator.toml", 2, secrets.passwords["operator"])
    backup = tmp_path / "validator-key.enc"
    generated = run_tmkms("yubihsm", "keys", "generate", "1", "-b", backup, "-c", operator)
    assert generated.returncode == 0, generated.stderr
    assert f"Wrote backup of key 1 (encrypted under wrap key 1) to {backup}" in generated.stderr
    public_hex = generated.stderr.split("key 0x0001: ")[1].split()[0]
    exported = tmp_path / "export.enc"
    result = run_tmkms("yubihsm", "keys", "export", "-i", "1", exported, "-c", operator)
    assert result.returncode == 0, result.stderr
    assert f"Exported key 0x0001 (encrypted under wrap key 0x0001) to {exported}" in result.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    blob = base64.b64decode(exported.read_text(), validate=True)
    assert len(blob) > 13 + 16 + 59 and exported.read_text().count("\n") == 0

    second = start_simulator(tmp_path / "b", "second")
    simulators.append(second)
    restored = setup_hsm(second, secrets.phrase + "\n", "--restore")
    assert restored.passwords == secrets.passwords and restored.wrap_key == secrets.wrap_key
    operator_b = second.config("operator.toml", 2, secrets.passwords["operator"])
    imported = run_tmkms("yubihsm", "keys", "import", exported, "-c", operator_b)
    assert imported.returncode == 0, imported.stderr
    assert f"Imported key 0x0001: {public_hex}" in imported.stderr
    validator_b = second.session(4, secrets.passwords["validator"])
    VerifyKey(bytes.fromhex(public_hex)).verify(
        b"moved", AsymmetricKey(validator_b, 1).sign_eddsa(b"moved")
    )
    twice = run_tmkms("yubihsm", "keys", "import", "-t", "wrap", backup, "-c", operator_b)
    assert twice.returncode == 6 and "OBJECT_EXISTS" in twice.stderr


def test_import_plaintext_keys(tmp_path: Path, hsm: Simulator) -> None:
    secrets = setup_hsm(hsm)
    operator = hsm.config("operator.toml", 2, secrets.passwords["operator"])
    json_key, seed_key = SigningKey.generate(), SigningKey.generate()
    pub = bytes(json_key.verify_key)
    pv_json = tmp_path / "priv_validator_key.json"
    pv_json.write_text(
        json.dumps(
            {
                "address": __import__("hashlib").sha256(pub).hexdigest()[:40].upper(),
                "pub_key": {
                    "type": "tendermint/PubKeyEd25519",
                    "value": base64.b64encode(pub).decode(),
                },
                "priv_key": {
                    "type": "tendermint/PrivKeyEd25519",
                    "value": base64.b64encode(bytes(json_key) + pub).decode(),
                },
            }
        )
    )
    seed_file = tmp_path / "seed.key"
    seed_file.write_text(base64.b64encode(bytes(seed_key)).decode() + "\n")
    seed_file.chmod(0o600)
    no_id = run_tmkms("yubihsm", "keys", "import", pv_json, "-c", operator)
    assert no_id.returncode == 1 and "no key ID specified" in no_id.stderr
    from_json = run_tmkms(
        "yubihsm", "keys", "import", "-i", "7", "-l", "from json", pv_json, "-c", operator
    )
    assert from_json.returncode == 0, from_json.stderr
    assert f"Imported key 0x0007: {pub.hex().upper()}" in from_json.stderr
    from_seed = run_tmkms(
        "yubihsm", "keys", "import", "-t", "base64", "-i", "8", seed_file, "-c", operator
    )
    assert from_seed.returncode == 0, from_seed.stderr
    validator = hsm.session(4, secrets.passwords["validator"])
    for key_id, key in ((7, json_key), (8, seed_key)):
        assert AsymmetricKey(validator, key_id).sign_eddsa(b"same") == key.sign(b"same").signature
    assert AsymmetricKey(validator, 7).get_info().label == "from json"


def test_signing_test_loop(hsm: Simulator) -> None:
    secrets = setup_hsm(hsm)
    operator = hsm.config("operator.toml", 2, secrets.passwords["operator"])
    assert run_tmkms("yubihsm", "keys", "generate", "1", "-c", operator).returncode == 0
    validator = hsm.config("validator.toml", 4, secrets.passwords["validator"])
    result = run_tmkms("yubihsm", "test", "1", "--count", "5", "-c", validator)
    assert result.returncode == 0, result.stderr
    successes = re.findall(r"Success signed message using key ID #1 in \d+\.\d ms", result.stderr)
    assert len(successes) == 5
    refused = run_tmkms("yubihsm", "test", "1", "-n", "2", "-c", operator)  # operators cannot sign
    assert refused.returncode == 6
    assert refused.stderr.count("error: signature operation failed:") == 2
    assert "INSUFFICIENT_PERMISSIONS" in refused.stderr


def test_errors_are_one_clear_line(tmp_path: Path, hsm: Simulator) -> None:
    no_section = tmp_path / "empty.toml"
    no_section.write_text("")
    result = run_tmkms("yubihsm", "keys", "list", "-c", no_section)
    assert result.returncode == 1
    assert "expected one [[providers.yubihsm]] section in config, found: 0" in result.stderr
    wrong = hsm.config("wrong.toml", 1, "nope")
    result = run_tmkms("yubihsm", "keys", "list", "-c", wrong)
    assert result.returncode == 6
    assert result.stderr.strip().splitlines() == [
        "error: error connecting to YubiHSM2: YubiHSM authentication with key 0x0001 failed (wrong password?)"
    ]
    unreachable = tmp_path / "down.toml"
    unreachable.write_text(
        '[[providers.yubihsm]]\nadapter = { type = "http", addr = "tcp://127.0.0.1:1" }\n'
        'auth = { key = 1, password = "password" }\n'
    )
    result = run_tmkms("yubihsm", "test", "1", "-n", "1", "-c", unreachable)
    assert result.returncode == 6 and "error connecting to YubiHSM2" in result.stderr
    assert run_tmkms("yubihsm", "keys", "generate", "0x", "-c", wrong).returncode == 2
    factory = hsm.config("factory.toml", 1, "password")
    long_label = run_tmkms("yubihsm", "keys", "generate", "1", "-l", "x" * 41, "-c", factory)
    assert long_label.returncode == 1 and "longer than 40 bytes" in long_label.stderr
    env_config = run_tmkms(
        "yubihsm", "keys", "list", cwd=tmp_path, env={"TMKMS_CONFIG_FILE": str(factory)}
    )
    assert env_config.returncode == 0 and "no keys in this YubiHSM" in env_config.stderr


def test_detect_lists_devices_on_the_usb_bus(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_usb_devices([YubiHsmDevice(serial=12345678), YubiHsmDevice(serial=7)]):
        assert main(["yubihsm", "detect"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "Detected YubiHSM2 USB devices:",
        "- Serial #0012345678 (bus 0)",
        "- Serial #0000000007 (bus 0)",
    ]
    with fake_usb_devices([]):
        assert main(["yubihsm", "detect"]) == 1
    assert "error: no YubiHSM2 devices detected!" in capsys.readouterr().err


def test_usb_adapter_commands_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tmkms.toml"
    config.write_text(
        '[[providers.yubihsm]]\nadapter = { type = "usb" }\nauth = { key = 1, password = "password" }\n'
        'serial_number = "0000000042"\n'
    )
    device = YubiHsmDevice(serial=42)
    with fake_usb_devices([YubiHsmDevice(serial=41), device]):
        assert main(["yubihsm", "keys", "generate", "9", "-c", str(config)]) == 0
        assert main(["yubihsm", "keys", "list", "-c", str(config)]) == 0
    out = capsys.readouterr()
    assert "Listing keys in YubiHSM #42:" in out.out
    assert "Generated consensus (ed25519) key 0x0009: " in out.err
    assert len(device.state.store.objects) == 2  # the factory key and the new key
