"""etcd user auth against a real 3-member cluster with auth enabled.

The KMS's user has a role limited to the watermark prefix. Tokens are etcd's simple
tokens with a 2 s TTL (``--auth-token-ttl``), so an expired token is a matter of waiting.
Neither the password nor a token may appear in any error, repr or log line.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kms.chain.state import BlockRef, SignState
from kms.config.etcd import EtcdSettings
from kms.ha.client import EtcdClient, Secret, encode
from kms.ha.errors import EtcdCause, EtcdError, HaRefused
from kms.ha.settings import open_client
from kms.ha.store import SharedWatermarkStore
from kms.ha.wire import b64
from tests.support.etcd import EtcdCluster, LocalFile, module_cluster

LIMIT = 30.0
PASSWORD = "correct-horse-battery-staple"
ROOT_PASSWORD = "root-secret-4711"
PREFIX = "/tmkms-auth/"
TOKEN_TTL = 2


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    for cluster in module_cluster(tmp_path_factory, extra_args=[f"--auth-token-ttl={TOKEN_TTL}"]):
        cluster.enable_auth("kms", PASSWORD, PREFIX, ROOT_PASSWORD)
        yield cluster


def client(etcd: EtcdCluster, password: str = PASSWORD) -> EtcdClient:
    return EtcdClient(etcd.endpoints, username="kms", password=Secret(password))


def key() -> bytes:
    return f"{PREFIX}{uuid.uuid4().hex}".encode()


def put_txn(k: bytes, value: bytes) -> bytes:
    return encode({"success": [{"request_put": {"key": b64(k), "value": b64(value)}}]})


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in (PASSWORD, ROOT_PASSWORD, *secrets):
        assert secret not in text


async def test_the_user_reads_and_writes_its_prefix(etcd: EtcdCluster) -> None:
    k = key()
    async with client(etcd) as kms:
        with trio.fail_after(LIMIT):
            assert (await kms.txn(put_txn(k, b"v"))).succeeded
            assert (await kms.range(k)).kvs[0].value == b"v"


async def test_outside_the_prefix_is_denied(etcd: EtcdCluster) -> None:
    async with client(etcd) as kms:
        with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
            await kms.range(b"/elsewhere")
    assert info.value.cause is EtcdCause.AUTH
    assert "permission denied" in str(info.value)


async def test_a_wrong_password_is_a_clear_error_without_the_password(
    etcd: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-password-1234"
    caplog.set_level(logging.DEBUG)
    async with client(etcd, wrong) as kms:
        with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
            await kms.range(key())
        shown = f"{info.value} {info.value!r} {kms!r} {vars(kms)!r}"
    assert info.value.cause is EtcdCause.AUTH
    assert "authentication as 'kms' failed" in str(info.value)
    assert "invalid user ID or password" in str(info.value)
    assert_no_secret(shown + caplog.text, wrong)


async def test_no_credentials_on_an_auth_cluster(etcd: EtcdCluster) -> None:
    async with EtcdClient(etcd.endpoints) as anonymous:
        with trio.fail_after(LIMIT), pytest.raises(EtcdError) as info:
            await anonymous.range(key())
    assert info.value.cause is EtcdCause.AUTH
    assert "user name is empty" in str(info.value)


async def test_an_expired_token_is_replaced_once(
    etcd: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    k = key()
    async with client(etcd) as kms:
        with trio.fail_after(LIMIT):
            await kms.range(k)
            first = kms._token
            assert first is not None
            await trio.sleep(TOKEN_TTL + 1.5)  # unused for longer than its TTL: etcd drops it
            started = time.monotonic()
            await kms.range(k)
            elapsed = time.monotonic() - started
        second = kms._token
        assert second is not None and second.reveal() != first.reveal()
        shown = f"{kms!r} {vars(kms)!r} {caplog.text}"
    assert elapsed < 1.0
    assert_no_secret(shown, first.reveal(), second.reveal())


async def test_the_store_refuses_on_auth_at_once(etcd: EtcdCluster, tmp_path: Path) -> None:
    async with client(etcd, "wrong-password-1234") as kms:
        store = SharedWatermarkStore(
            LocalFile(tmp_path / "state.json"),
            chain_id="auth-chain",
            client=kms,
            host="kms-a",
            prefix=PREFIX,
            timeout=1.0,
        )
        started = time.monotonic()
        with trio.fail_after(LIMIT), pytest.raises(HaRefused) as info:
            await store.save(SignState(1, 0, 1, BlockRef.NIL))
    assert info.value.reason == "ha_auth"
    assert time.monotonic() - started < 0.5  # refused at once: retrying cannot help
    assert_no_secret(str(info.value), "wrong-password-1234")


async def test_settings_with_a_password_file(etcd: EtcdCluster, tmp_path: Path) -> None:
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    settings = EtcdSettings(etcd.endpoints, username="kms", password_file=password_file)
    async with open_client(settings) as kms:
        with trio.fail_after(LIMIT):
            status = await kms.status()
    assert status.leader
