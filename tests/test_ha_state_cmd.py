"""`tmkms state show|init|import|set` with `[etcd]`, against a real 3-member etcd cluster.

The commands run in-process (``kms.cli.main``), as in ``test_state_cmd.py``; what etcd holds
is read and written with the test helpers' own HTTP client (``tests.support.etcd``), not
the project's.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms.chain.state import BlockRef, SignState
from kms.chain.stateformat import format_state, parse_state
from kms.cli import main
from kms.commands.state import describe
from kms.ha.watermark import format_watermark, new_nonce, parse_watermark
from tests.support.etcd import ClusterTls, EtcdCluster, free_ports, running_cluster

pytestmark = pytest.mark.usefixtures("restore_root_logger")

CHAINS = ("alpha-1", "beta-2")
HOST = "ops-1"
BLOCK_A = BlockRef(hash=bytes(range(32)), parts_total=1, parts_hash=bytes(32))
BLOCK_B = BlockRef(hash=bytes(range(1, 33)), parts_total=2, parts_hash=bytes(range(32)))
PASSWORD = "s3cret-etcd-passw0rd"


def write_home(
    home: Path,
    endpoints: list[str],
    prefix: str,
    *,
    auth: tuple[str, Path] | None = None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Path:
    """Two chains (no keys: the state commands need none) and an ``[etcd]`` section."""
    (home / "state").mkdir(exist_ok=True)
    text = ""
    for chain in CHAINS:
        text += (
            f'[[chain]]\nid = "{chain}"\nkey_format = {{ type = "hex" }}\n'
            f'state_file = "{home}/state/{chain}.json"\n\n'
        )
    text += f"[etcd]\nendpoints = {json.dumps(endpoints)}\nprefix = {json.dumps(prefix)}\n"
    text += f'host = "{HOST}"\n'
    if auth is not None:
        text += f'username = "{auth[0]}"\npassword_file = "{auth[1]}"\n'
    if tls is not None:
        text += f'ca_file = "{tls[0]}"\ncert_file = "{tls[1]}"\nkey_file = "{tls[2]}"\n'
    config = home / "tmkms.toml"
    config.write_text(text)
    return config


@pytest.fixture
def prefix() -> str:
    return f"/tmkms-cmd-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def home(tmp_path: Path, etcd: EtcdCluster, prefix: str) -> Path:
    write_home(tmp_path, etcd.endpoints, prefix)
    return tmp_path


def run(home: Path, *args: str) -> int:
    return main(["state", *args[:1], "-c", str(home / "tmkms.toml"), *args[1:]])


def state_path(home: Path, chain: str = "alpha-1") -> Path:
    return home / "state" / f"{chain}.json"


def write_state(home: Path, state: SignState, chain: str = "alpha-1") -> None:
    state_path(home, chain).write_bytes(format_state(state))


def tmkms_file(tmp_path: Path, state: SignState) -> Path:
    path = tmp_path / f"import-{uuid.uuid4().hex[:6]}.json"
    path.write_bytes(format_state(state))
    return path


def stored(etcd: EtcdCluster, prefix: str, chain: str = "alpha-1") -> bytes | None:
    return etcd.get_value(f"{prefix}{chain}")


def written_by_other(etcd: EtcdCluster, prefix: str, state: SignState, host: str) -> bytes:
    """Another host's watermark, put directly (as its check-and-set would leave it)."""
    value = format_watermark(state, host, new_nonce())
    etcd.put_value(f"{prefix}alpha-1", value)
    return value


def test_show_import_and_set_keep_the_watermark_with_the_local_state(
    home: Path, etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """show: missing; import: created by this host; set: raised; show names the writer."""
    assert run(home, "show") == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == f"etcd: {', '.join(etcd.endpoints)} (prefix {prefix})"
    assert shown[1] == "alpha-1: nothing signed yet (no state file)"
    assert shown[3].startswith(f"    shared: missing (no etcd key {prefix}alpha-1;")
    assert shown[-1].startswith(f"    shared: missing (no etcd key {prefix}beta-2;")

    imported = SignState(77, 3, 1, BLOCK_A)
    assert run(home, "import", "alpha-1", str(tmkms_file(home, imported))) == 0
    out = capsys.readouterr().out
    assert "after:  77/3/1 Prevote" in out
    assert (
        f"  shared: created at 77/3/1 Prevote, block {BLOCK_A.hash.hex().upper()} by {HOST}" in out
    )
    mark = parse_watermark(stored(etcd, prefix) or b"")
    assert mark.state == imported and mark.host == HOST

    assert run(home, "set", "alpha-1", "100") == 0
    out = capsys.readouterr().out
    assert "after:  100/0/0 Proposal, block <nil>" in out
    assert (
        f"  shared: raised from 77/3/1 Prevote, block {BLOCK_A.hash.hex().upper()} (by {HOST})"
        in out
    )
    assert f"to 100/0/0 Proposal, block <nil> by {HOST} (etcd key {prefix}alpha-1, revision" in out
    assert parse_watermark(stored(etcd, prefix) or b"").state == SignState(100, 0, 0)

    written_by_other(etcd, prefix, SignState(120, 1, 2, BLOCK_B), "kms-b")
    assert run(home, "show") == 0
    shown = capsys.readouterr().out.splitlines()
    alpha = shown.index("alpha-1: 100/0/0 Proposal, block <nil>")
    shared = shown[alpha + 2]
    assert shared.startswith(
        f"    shared: 120/1/2 Precommit, block {BLOCK_B.hash.hex().upper()}, written by kms-b "
        f"(etcd key {prefix}alpha-1, revision "
    )
    assert shared.endswith("), ahead of the local state (tmkms start adopts it)")

    assert run(home, "show", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["etcd"] == {"endpoints": etcd.endpoints, "prefix": prefix, "reachable": True}
    alpha_doc, beta_doc = doc["chains"]
    assert alpha_doc["height"] == 100  # the local state, as without [etcd]
    shared_doc = alpha_doc["shared"]
    assert shared_doc["mod_revision"] > 0 and len(shared_doc["nonce"]) == 24
    assert {k: v for k, v in shared_doc.items() if k not in ("mod_revision", "nonce")} == {
        "key": f"{prefix}alpha-1",
        "status": "ok",
        "host": "kms-b",
        "height": 120,
        "round": 1,
        "step": 2,
        "step_name": "Precommit",
        "block_id": {
            "hash": BLOCK_B.hash.hex().upper(),
            "parts": {"total": 2, "hash": bytes(range(32)).hex().upper()},
        },
    }
    assert beta_doc["shared"] == {"key": f"{prefix}beta-2", "status": "missing"}


def test_init_creates_missing_watermarks_from_the_local_states_and_only_those(
    home: Path, etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """alpha-1 has a state file, beta-2 none (height 0); a second init changes nothing."""
    signed = SignState(77, 3, 1, BLOCK_A)
    write_state(home, signed)
    assert run(home, "init") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"chain alpha-1 (state file {state_path(home)}): {describe(signed)}"
    assert out[1].startswith(f"  shared: created at {describe(signed)} by {HOST} (etcd key ")
    assert out[3].startswith(f"  shared: created at 0/0/0 Proposal, block <nil> by {HOST}")
    assert out[4].startswith("  note: created at height 0 (no state on this host): if this")
    assert len(out) == 5  # alpha-1 had a state: no note
    alpha = parse_watermark(stored(etcd, prefix) or b"")
    beta = parse_watermark(stored(etcd, prefix, "beta-2") or b"")
    assert (alpha.state, alpha.host) == (signed, HOST)
    assert beta.state == SignState.INITIAL

    write_state(home, SignState(80, 0, 0, BLOCK_B))  # init never raises an existing one
    other = written_by_other(etcd, prefix, SignState(78, 0, 0, BLOCK_A), "kms-b")
    assert run(home, "init", "alpha-1") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("  shared: exists at 78/0/0 Proposal, block ")
    assert "written by kms-b" in out[1] and "left as it is" in out[1]
    assert stored(etcd, prefix) == other


def test_init_leaves_a_malformed_value_alone_and_needs_etcd(
    home: Path, etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    etcd.put_value(f"{prefix}alpha-1", b"not a watermark")
    assert run(home, "init") == 4
    out = capsys.readouterr().out
    assert "  shared: left alone: etcd key " in out and "does not hold a tmkms watermark" in out
    assert stored(etcd, prefix) == b"not a watermark"
    assert parse_watermark(stored(etcd, prefix, "beta-2") or b"").host == HOST

    config = home / "tmkms.toml"
    config.write_text(config.read_text().split("[etcd]")[0])
    assert run(home, "init") != 0
    error = capsys.readouterr().err
    assert str(config) in error and "[etcd]" in error and "Traceback" not in error


def test_the_watermark_is_never_lowered_without_force(
    home: Path, etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    higher = written_by_other(etcd, prefix, SignState(500, 0, 2, BLOCK_B), "kms-b")
    # set: the local state moves up, the watermark (ahead of it) stays as it is
    assert run(home, "set", "alpha-1", "200") == 0
    out = capsys.readouterr().out
    assert "after:  200/0/0 Proposal" in out
    assert "  shared: unchanged at 500/0/2 Precommit, block 0102" in out
    assert "written by kms-b" in out and out.rstrip().endswith("already at or past 200/0/0")
    assert stored(etcd, prefix) == higher  # byte for byte: not even rewritten

    # import: the same
    assert run(home, "import", "alpha-1", str(tmkms_file(home, SignState(300, 0, 1)))) == 0
    assert "  shared: unchanged at 500/0/2" in capsys.readouterr().out
    assert stored(etcd, prefix) == higher

    # the same height/round/step with another block: kept, and said so
    same_step = tmkms_file(home, SignState(500, 0, 2, BLOCK_A))
    assert run(home, "import", "alpha-1", str(same_step)) == 0
    out = capsys.readouterr().out
    assert "already at 500/0/2 with another block; both are kept" in out
    assert stored(etcd, prefix) == higher

    # --force lowers both, and says so
    assert (
        run(home, "import", "alpha-1", str(tmkms_file(home, SignState(40, 0, 0))), "--force") == 0
    )
    out = capsys.readouterr().out
    assert "after:  40/0/0 Proposal" in out
    assert "  shared: lowered (--force) from 500/0/2 Precommit, block 0102" in out
    assert f"(by kms-b) to 40/0/0 Proposal, block <nil> by {HOST}" in out
    mark = parse_watermark(stored(etcd, prefix) or b"")
    assert mark.state == SignState(40, 0, 0) and mark.host == HOST
    assert parse_state(state_path(home).read_bytes()) == SignState(40, 0, 0)


def test_a_malformed_value_is_shown_and_left_alone_unless_forced(
    home: Path, etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    etcd.put_value(f"{prefix}alpha-1", b'{"height":"9"}')
    write_state(home, SignState(5, 0, 1))
    assert run(home, "show") == 4
    out = capsys.readouterr().out
    assert f"    shared: malformed: etcd key {prefix}alpha-1 (revision " in out
    assert "does not hold a tmkms watermark: host must be a non-empty string, got None" in out
    assert run(home, "show", "--json") == 4
    shared = json.loads(capsys.readouterr().out)["chains"][0]["shared"]
    assert shared["status"] == "malformed" and "host must be" in shared["error"]

    assert run(home, "set", "alpha-1", "6") == 4
    out = capsys.readouterr().out
    assert "after:  6/0/0 Proposal" in out  # the local write happened first
    assert "  shared: left alone: etcd key" in out
    assert "`tmkms state import --force` replaces it" in out
    assert stored(etcd, prefix) == b'{"height":"9"}'

    source = tmkms_file(home, SignState(7, 0, 0))
    assert run(home, "import", "alpha-1", str(source)) == 4
    assert "; use --force to replace it" in capsys.readouterr().out
    assert stored(etcd, prefix) == b'{"height":"9"}'
    assert run(home, "import", "alpha-1", str(source), "--force") == 0
    out = capsys.readouterr().out
    assert f"  shared: replaced a malformed value with 7/0/0 Proposal, block <nil> by {HOST}" in out
    assert parse_watermark(stored(etcd, prefix) or b"").state == SignState(7, 0, 0)


def test_an_etcd_nobody_answers_on_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the endpoints: show still shows the local states; import/set
    write locally, then fail with exit 1 saying the watermark was not raised."""
    endpoints = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    home = tmp_path
    write_home(home, endpoints, "/tmkms/")
    write_state(home, SignState(5, 0, 1))
    assert run(home, "show") == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith(f"etcd: not reachable: etcd {endpoints[0]}: cannot connect: ")
    assert f"etcd {endpoints[1]}: cannot connect: " in out[0]
    assert out[1] == "alpha-1: 5/0/1 Prevote, block <nil>"
    assert out[3] == "    shared: unknown: etcd not reachable (key /tmkms/alpha-1)"
    assert "Traceback" not in captured.out + captured.err
    assert run(home, "show", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["etcd"]["reachable"] is False and "cannot connect" in doc["etcd"]["error"]
    assert doc["chains"][0]["shared"]["status"] == "unknown"
    assert doc["chains"][0]["height"] == 5

    assert run(home, "set", "alpha-1", "10") == 1
    captured = capsys.readouterr()
    assert "after:  10/0/0 Proposal" in captured.out
    assert (
        "  shared: not changed (etcd key /tmkms/alpha-1): etcd could not be asked" in captured.out
    )
    error = captured.err.strip()
    assert error.startswith("error: the shared watermark of alpha-1 was not raised: etcd")
    assert "run this command again once etcd answers" in error
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert parse_state(state_path(home).read_bytes()) == SignState(10, 0, 0)

    assert run(home, "init") == 1
    captured = capsys.readouterr()
    assert "  shared: not created (etcd key /tmkms/alpha-1): etcd could not be asked" in (
        captured.out
    )
    assert "etcd could not be asked: " in captured.out and "Traceback" not in captured.err


def test_no_quorum_is_one_line_within_the_wait(
    home: Path, etcd: EtcdCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two members of three paused: no member can answer with a leader."""
    etcd.lose_quorum(keep=0)
    try:
        started = time.monotonic()
        assert run(home, "show") == 1
        elapsed = time.monotonic() - started
    finally:
        etcd.regain_quorum()
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first.startswith("etcd: not reachable: "), first
    assert "Traceback" not in captured.out + captured.err
    assert elapsed < 5.0 + 2.0, elapsed


@pytest.fixture
def auth_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A cluster of its own with auth on: user ``tmkms`` may read and write its prefix only."""
    with running_cluster(tmp_path / "etcd-auth") as cluster:
        cluster.enable_auth("tmkms", PASSWORD, "/tmkms-auth/", root_password="r00t-pw")
        yield cluster


def test_auth_with_a_prefix_role_and_the_password_never_shown(
    tmp_path: Path, auth_cluster: EtcdCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    write_home(home, auth_cluster.endpoints, "/tmkms-auth/", auth=("tmkms", password_file))
    assert run(home, "set", "alpha-1", "42") == 0
    out = capsys.readouterr().out
    assert f"  shared: created at 42/0/0 Proposal, block <nil> by {HOST}" in out
    assert run(home, "show") == 0
    out = capsys.readouterr().out
    assert "    shared: 42/0/0 Proposal, block <nil>, written by ops-1" in out

    # a prefix the role does not cover: refused by etcd, one line, no password
    write_home(home, auth_cluster.endpoints, "/elsewhere/", auth=("tmkms", password_file))
    assert run(home, "show") == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("etcd: not reachable: ")
    assert "permission denied" in captured.out.splitlines()[0]

    wrong = "not-the-" + PASSWORD
    password_file.write_text(wrong)
    write_home(home, auth_cluster.endpoints, "/tmkms-auth/", auth=("tmkms", password_file))
    assert run(home, "show") == 1
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert "authentication as 'tmkms' failed" in first, first
    assert run(home, "set", "alpha-1", "50") == 1
    captured2 = capsys.readouterr()
    assert "error: the shared watermark of alpha-1 was not raised" in captured2.err
    for text in (captured.out, captured.err, captured2.out, captured2.err):
        assert PASSWORD not in text and wrong not in text
        assert "Traceback" not in text


def _certificate(
    folder: Path,
    name: str,
    subject: x509.Name,
    usage: list[x509.ObjectIdentifier],
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[Path, Path, x509.Name, ec.EllipticCurvePrivateKey]:
    """A P-256 certificate (a CA when ``issuer`` is None) written as ``<name>.pem/.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        alt = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(alt, critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, subject, key


def _name(**parts: str) -> x509.Name:
    oids = {"cn": NameOID.COMMON_NAME, "o": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts.items()])


def test_tls_client_certificates_with_auth_as_the_readme_sets_them_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Client certificates required and auth on (a role limited to the prefix): the
    members' certificate has serverAuth and clientAuth, the KMS's has no CommonName (etcd's
    JSON gateway refuses one with a CN while auth is on: a clear line, not a 400)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_pem, _, ca_name, ca_key = _certificate(pki, "ca", _name(cn="etcd CA"), [])
    by_ca = (ca_name, ca_key)
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    member = _certificate(pki, "member", _name(cn="etcd1"), both, by_ca)
    client = [ExtendedKeyUsageOID.CLIENT_AUTH]
    kms = _certificate(pki, "kms", _name(o="tmkms"), client, by_ca)
    named = _certificate(pki, "kms-named", _name(cn="kms-a"), client, by_ca)
    helper = _certificate(pki, "helper", _name(o="tests"), client, by_ca)
    tls = ClusterTls(
        cert_file=member[0],
        key_file=member[1],
        client_ca_file=ca_pem,
        ca_file=ca_pem,
        helper_cert=(helper[0], helper[1]),
    )
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    home = tmp_path / "home"
    home.mkdir()
    with running_cluster(tmp_path / "etcd", tls=tls) as cluster:
        cluster.enable_auth("tmkms", PASSWORD, "/tmkms-tls/", root_password="r00t-pw")
        auth = ("tmkms", password_file)
        write_home(home, cluster.endpoints, "/tmkms-tls/", auth=auth, tls=(ca_pem, kms[0], kms[1]))
        assert run(home, "set", "alpha-1", "9") == 0
        assert f"  shared: created at 9/0/0 Proposal, block <nil> by {HOST}" in (
            capsys.readouterr().out
        )
        assert run(home, "show") == 0
        assert "    shared: 9/0/0 Proposal, block <nil>, written by ops-1" in (
            capsys.readouterr().out
        )

        tls_files = (ca_pem, named[0], named[1])
        write_home(home, cluster.endpoints, "/tmkms-tls/", auth=auth, tls=tls_files)
        started = time.monotonic()
        assert run(home, "show") == 1
        assert time.monotonic() - started < 5.0  # etcd's answer: not retried until the deadline
        captured = capsys.readouterr()
        first = captured.out.splitlines()[0]
        assert first.startswith("etcd: not reachable: etcd https://127.0.0.1:"), first
        assert (
            "authentication as 'tmkms' failed: etcd's JSON gateway refuses a client certificate "
            "with a CommonName while auth is enabled: issue the KMS's certificate without a CN"
        ) in first
        assert PASSWORD not in captured.out + captured.err
