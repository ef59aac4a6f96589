"""TLS to a real 3-member etcd cluster: server verification, client certificates, mismatches.

Every certificate is made here with ``cryptography``: a CA that signs the members'
certificate (subjectAltName IP 127.0.0.1 only) and the KMS's client certificate, and a
second, unrelated CA with a client certificate of its own. The members require a client
certificate signed by the first CA.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms.chain.state import BlockRef, SignState
from kms.config.etcd import EtcdSettings
from kms.errors import ConfigError
from kms.ha.client import EtcdClient
from kms.ha.errors import EtcdCause, EtcdError
from kms.ha.settings import open_client
from kms.ha.store import SharedWatermarkStore
from kms.ha.tls import client_context
from tests.support.etcd import ClusterTls, EtcdCluster, LocalFile, module_cluster
from tests.support.watermarks import init_watermarks

LIMIT = 20.0


@attrs.frozen
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    other_ca: Path
    other_client: tuple[Path, Path]
    encrypted_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: tuple[x509.ObjectIdentifier, ...] = (),
    ips: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    if ips:
        alt = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
           password: bytes | None = None) -> tuple[Path, Path]:  # fmt: skip
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in
            ("ca", "server", "client", "other_ca", "other_client")}  # fmt: skip
    ca = _issue("tmkms test CA", keys["ca"], None, ca=True)
    other_ca = _issue("unrelated CA", keys["other_ca"], None, ca=True)
    by_ca = (ca.subject, keys["ca"])
    # etcd's JSON gateway dials the member's gRPC server with the member's certificate: with
    # client certificates required, it needs clientAuth too (else the gateway answers 503)
    both = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    server = _issue("etcd", keys["server"], by_ca, usage=both, ips=("127.0.0.1",))
    client = _issue("tmkms", keys["client"], by_ca, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    other_client = _issue("intruder", keys["other_client"], (other_ca.subject, keys["other_ca"]),
                          usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))  # fmt: skip
    ca_path, _ = _write(folder, "ca", ca, keys["ca"])
    other_ca_path, _ = _write(folder, "other-ca", other_ca, keys["other_ca"])
    _, encrypted = _write(folder, "encrypted", client, keys["client"], b"passphrase")
    return Pki(
        ca=ca_path,
        server=_write(folder, "server", server, keys["server"]),
        client=_write(folder, "client", client, keys["client"]),
        other_ca=other_ca_path,
        other_client=_write(folder, "other-client", other_client, keys["other_client"]),
        encrypted_key=encrypted,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EtcdCluster]:
    tls = ClusterTls(
        cert_file=pki.server[0],
        key_file=pki.server[1],
        client_ca_file=pki.ca,
        ca_file=pki.ca,
        helper_cert=pki.client,
    )
    yield from module_cluster(tmp_path_factory, tls=tls)


async def failing(client: EtcdClient) -> EtcdError:
    async with client:
        with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
            await client.range(b"/tmkms-tls/k")
    return info.value


async def test_verified_server_and_client_certificate(etcd: EtcdCluster, pki: Pki) -> None:
    settings = EtcdSettings(
        etcd.endpoints, ca_file=pki.ca, cert_file=pki.client[0], key_file=pki.client[1]
    )
    async with open_client(settings) as client:
        with trio.fail_after(LIMIT):
            status = await client.status()
            result = await client.range(b"/tmkms-tls/k")
    assert status.leader and result.kvs == ()


async def test_a_store_over_tls(etcd: EtcdCluster, pki: Pki, tmp_path: Path) -> None:
    context = client_context(pki.ca, *pki.client)
    await init_watermarks(etcd, "/tmkms-tls/", ["tls-chain"])
    async with EtcdClient(etcd.endpoints, ssl_context=context) as client:
        store = SharedWatermarkStore(
            LocalFile(tmp_path / "state.json"), chain_id="tls-chain", client=client,
            host="kms-a", prefix="/tmkms-tls/",
        )  # fmt: skip
        with trio.fail_after(LIMIT):
            await store.save(SignState(3, 0, 1, BlockRef.NIL))
    assert await trio.to_thread.run_sync(etcd.get_value, "/tmkms-tls/tls-chain")


async def test_a_server_signed_by_another_ca_is_rejected(etcd: EtcdCluster, pki: Pki) -> None:
    context = client_context(pki.other_ca, *pki.client)
    error = await failing(EtcdClient(etcd.endpoints, ssl_context=context))
    assert error.cause is EtcdCause.TLS
    assert "server certificate rejected" in str(error)


async def test_a_host_name_the_certificate_does_not_cover(etcd: EtcdCluster, pki: Pki) -> None:
    port = etcd.members[0].client_port
    context = client_context(pki.ca, *pki.client)
    error = await failing(EtcdClient([f"https://localhost:{port}"], ssl_context=context))
    assert error.cause is EtcdCause.TLS
    assert "localhost" in str(error)


@pytest.mark.parametrize("which", ["none", "other"])
async def test_the_server_refuses_a_missing_or_foreign_client_certificate(
    etcd: EtcdCluster, pki: Pki, which: str
) -> None:
    context = (
        client_context(pki.ca, *pki.other_client) if which == "other" else client_context(pki.ca)
    )
    error = await failing(EtcdClient(etcd.endpoints, ssl_context=context))
    assert error.cause is EtcdCause.TLS
    assert "client certificate" in str(error)


async def test_plain_http_to_the_tls_port(etcd: EtcdCluster) -> None:
    port = etcd.members[0].client_port
    error = await failing(EtcdClient([f"http://127.0.0.1:{port}"]))
    # etcd closes the connection without a byte (a Go server with its own TLS listener
    # would answer 400 "HTTP request to an HTTPS server", classified as TLS in test_ha_wire)
    assert error.cause is EtcdCause.UNREACHABLE
    assert "TLS-only endpoint? then use https://" in str(error)


async def test_tls_to_a_plain_port(pki: Pki) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        context = client_context(pki.ca)
        error = await failing(EtcdClient([f"https://127.0.0.1:{port}"], ssl_context=context))
        nursery.cancel_scope.cancel()
    assert error.cause is EtcdCause.TLS
    assert "does not speak TLS" in str(error)


def test_unusable_tls_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the etcd CA file"):
        client_context(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="cannot load the etcd client certificate"):
        client_context(pki.ca, pki.client[0], pki.other_client[1])  # key of another cert
    with pytest.raises(ConfigError, match="is encrypted"):
        client_context(pki.ca, pki.client[0], pki.encrypted_key)
    with pytest.raises(ConfigError) as info:
        client_context(pki.ca, pki.client[0], pki.server[1])
    assert "PRIVATE KEY" not in str(info.value)
