"""Operations pieces in-process: counters, exposition, readiness, the HTTP listener, sd_notify
and the state lock."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

import kms.ops
from kms.chain.local import LocalStore
from kms.chain.state import Refusal, SignState
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker, DoubleSignRefused, MaxHeightRefused
from kms.errors import ConfigError, KmsError, SignerError, StateError
from kms.handler import RequestHandler
from kms.lock import StateLockedError, lock_state_files, state_lock_holder
from kms.ops import (
    KmsMetrics,
    ValidatorMetrics,
    server,
)
from kms.ops.exposition import build_registry, render
from kms.ops.health import readiness
from kms.ops.runtime import make_app
from kms.ops.stats import HaMetrics, Histogram
from kms.protocol.messages import SignedMsgType, SignVoteRequest
from kms.protocol.version import ProtocolVersion
from kms.sdnotify import ReadyNotifier, notify, notify_socket_address, watchdog_interval
from kms.sim.consensus import make_vote, random_block_id
from providers import ProviderHealth
from providers.softsign import Ed25519SoftSigner

# -- counters ------------------------------------------------------------------------------


def test_histogram_buckets_are_upper_inclusive() -> None:
    histogram = Histogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.0011, 0.01, 5.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.001, 2), (0.01, 4), (float("inf"), 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(5.0126)


def test_failures_are_classified_by_reason() -> None:
    metrics = KmsMetrics()
    v = metrics.validator("c-1", "unix:///x", "softsign")
    last, new = SignState(5, 0, 1), SignState(4, 0, 1)
    for refusal in (Refusal.HEIGHT_REGRESSION, Refusal.DOUBLE_SIGN, Refusal.DOUBLE_SIGN):
        v.failed(DoubleSignRefused("double signing requested", refusal, f"{last} {new}"))
    v.failed(MaxHeightRefused("too high"))
    v.failed(StateError("disk full"))
    assert v.refusals["height_regression"] == 1
    assert v.refusals["double_sign"] == 2
    assert v.refusals["max_height"] == 1
    assert v.errors == {"signer": 0, "state_write": 1, "other": 0}
    assert metrics.providers["softsign"].reachable
    v.failed(SignerError("HSM gone"))
    provider = metrics.providers["softsign"]
    assert (provider.signer_errors, provider.reachable, provider.last_error) == (
        1,
        False,
        "HSM gone",
    )
    v.signed(2, 9, 1)
    assert provider.reachable and v.last_signed == (9, 1, 2)
    assert v.signatures["precommit"] == 1


def test_connection_lifecycle() -> None:
    v = ValidatorMetrics("c-1", "tcp://h:1")
    v.on_session_ended("I/O error: Connection refused (os error 111)")
    v.on_reconnect()
    v.on_handshake_failure()
    v.on_session_ended("protocol error: bad handshake")
    v.on_reconnect()
    v.on_connected()
    assert (v.connected, v.connections, v.connect_failures, v.handshake_failures) == (True, 1, 2, 1)
    assert v.last_error is None and v.connected_since is not None
    v.on_session_ended("validator closed the connection")
    assert (v.connected, v.connect_failures, v.reconnects) == (False, 2, 2)
    assert v.last_error == "validator closed the connection"


def test_a_providers_health_reports_reach_the_metrics() -> None:
    metrics = KmsMetrics()
    hsm: ProviderHealth = metrics.provider("yubihsm")  # what the keyring hands a provider
    assert hsm is metrics.providers["yubihsm"] is metrics.provider("yubihsm")
    metrics.providers["yubihsm"].session_reopened()
    kept = {"session_reopens": 0}  # a provider's own counter, read at scrape time
    hsm.count_session_reopens_from(lambda: kept["session_reopens"])
    kept["session_reopens"] = 1
    hsm.set_reachable(False, "USB device disconnected")
    body = readiness(metrics)
    assert body["ready"] is False
    assert body["providers"] == [
        {"name": "yubihsm", "reachable": False, "last_error": "USB device disconnected"}
    ]
    text = render(build_registry(metrics, process=False)).decode()
    assert 'tmkms_provider_session_reopens_total{provider="yubihsm"} 2.0' in text
    assert 'tmkms_provider_reachable{provider="yubihsm"} 0.0' in text
    hsm.set_reachable(True)
    assert readiness(metrics)["ready"] is True


def test_a_chain_without_first_contact_keeps_the_kms_not_ready() -> None:
    """etcd answers, but one chain's watermark is missing: not ready, and the body says
    which chain and why; ready once every chain's first contact is done."""
    metrics = KmsMetrics()
    metrics.ha = HaMetrics()
    metrics.ha.set_reachable(True, "http://10.0.0.1:2379", None)
    assert readiness(metrics)["ready"] is True
    why = "shared watermark of c-1: missing: ... run `tmkms state init` ..."
    metrics.ha.set_unreconciled({"c-1": why})
    body = readiness(metrics)
    assert body["ready"] is False
    assert body["etcd"] == {
        "reachable": True,
        "endpoint": "http://10.0.0.1:2379",
        "not_reconciled": {"c-1": why},
    }
    metrics.ha.set_unreconciled({})
    assert readiness(metrics)["ready"] is True
    assert "not_reconciled" not in readiness(metrics)["etcd"]


# -- the handler and the exposition, in-process ----------------------------------------------


class BrokenSigner(Ed25519SoftSigner):
    provider = "flaky"
    broken = True

    async def sign(self, message: bytes) -> bytes:
        if self.broken:
            raise SignerError("device not answering")
        return await super().sign(message)


async def test_handler_counts_signer_and_state_failures(tmp_path: Path) -> None:
    metrics = KmsMetrics()
    signer = BrokenSigner(SigningKey.generate())
    (tmp_path / "state").mkdir()
    tracker = ChainTracker("c-1", LocalStore(StateFile(tmp_path / "state" / "s.json")), signer)
    await tracker.open()
    metrics.add_chain(tracker)
    handler = RequestHandler(
        chain_id="c-1",
        version=ProtocolVersion.V0_38,
        tracker=tracker,
        signer=signer,
        sign_extensions=False,
        peer="unix:///pv.sock",
        metrics=metrics.validator("c-1", "unix:///pv.sock", signer.provider),
    )
    rng = random.Random(3)

    async def ask(height: int) -> bool:
        vote = make_vote(SignedMsgType.PREVOTE, height, 0, random_block_id(rng))
        answer = await handler.answer(SignVoteRequest(vote=vote, chain_id="c-1"))
        handler.report(answer)
        return answer.response.error is None  # type: ignore[union-attr]

    assert not await ask(1)
    assert readiness(metrics)["providers"] == [
        {"name": "flaky", "reachable": False, "last_error": "device not answering"}
    ]
    signer.broken = False
    assert await ask(2)
    shutil.rmtree(tmp_path / "state")  # the next state write fails
    assert not await ask(3)
    text = render(build_registry(metrics, process=False)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("chain_id", "c-1"), ("validator", "unix:///pv.sock"))
    assert (
        samples[("tmkms_request_errors_total", (*labels[:1], ("kind", "signer"), *labels[1:]))] == 1
    )
    assert (
        samples[("tmkms_request_errors_total", (*labels[:1], ("kind", "state_write"), *labels[1:]))]
        == 1
    )
    assert samples[("tmkms_provider_signer_errors_total", (("provider", "flaky"),))] == 1
    assert samples[("tmkms_provider_reachable", (("provider", "flaky"),))] == 1
    assert samples[("tmkms_chain_state_height", (("chain_id", "c-1"),))] == 2
    # the failed signature still saved its state (conservative), the failed write did not
    counts = [
        samples[("tmkms_sign_duration_seconds_count", (*labels[:1], ("phase", p), *labels[1:]))]
        for p in ("queue", "state_write", "signer")
    ]
    assert counts == [1, 1, 1]
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["tmkms_signatures"] == "counter"
    assert families["tmkms_sign_duration_seconds"] == "histogram"
    assert families["tmkms_validator_connected"] == "gauge"


def test_app_routes() -> None:
    metrics = KmsMetrics()
    metrics.validator("c-1", "tcp://a:1", "softsign")
    app = make_app(metrics, process_metrics=False)
    ready = app("GET", "/readyz")
    assert ready.status == 503 and ready.content_type == "application/json"
    assert json.loads(ready.body)["validators"][0]["connected"] is False
    metrics.validators[0].on_connected()
    assert app("GET", "/readyz").status == 200
    health = json.loads(app("GET", "/healthz").body)
    assert health["status"] == "ok" and health["uptime_seconds"] >= 0
    assert app("GET", "/metrics").body.startswith(b"# HELP tmkms_signatures_total")
    assert app("GET", "/other").status == 404


# -- the HTTP listener -----------------------------------------------------------------------


def test_bound_addresses_are_written_back_as_host_port() -> None:
    assert server.format_laddr(("127.0.0.1", 9181)) == "127.0.0.1:9181"
    assert server.format_laddr(("::1", 5, 0, 0)) == "[::1]:5"


async def test_listener_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="metrics address: expected host:port"):
        await server.open_listeners("nonsense")
    taken = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = taken[0].socket.getsockname()[1]
    async with taken[0]:
        with pytest.raises(KmsError, match=f"127.0.0.1:{port}: address already in use"):
            await server.open_listeners(f"127.0.0.1:{port}")


async def _request(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
        return reply


async def test_listener_survives_junk_slow_clients_and_app_bugs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "REQUEST_TIMEOUT", 0.3)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 2)

    def app(method: str, path: str) -> server.HttpResponse:
        if path == "/boom":
            raise RuntimeError("bug")
        return server.HttpResponse(200, "text/plain", f"{method} {path}".encode())

    listeners = await server.open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_http, listeners, app)
            reply = await _request(port, b"GET /x?y HTTP/1.1\r\nHost: a\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nContent-Length: 6\r\n" in reply and reply.endswith(b"\r\n\r\nGET /x")
            oversized = b"x" * (server.MAX_HEAD + 1)  # all read before the 400: no reset
            assert (await _request(port, oversized)).startswith(b"HTTP/1.1 400 ")
            assert await _request(port, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n") == b""
            # Two silent clients take both slots; a third request waits for their timeouts.
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await trio.sleep(0.05)
            started = time.monotonic()
            reply = await _request(port, b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
            assert reply.endswith(b"GET /late")
            assert time.monotonic() - started >= 0.15
            for stream in idle:
                assert await stream.receive_some(10) == b""  # closed by the server
                await stream.aclose()
            nursery.cancel_scope.cancel()


def _echo(method: str, path: str) -> server.HttpResponse:
    return server.HttpResponse(200, "text/plain", f"{method} {path}".encode())


@contextlib.asynccontextmanager
async def _serving(app: server.App = _echo) -> AsyncIterator[int]:
    """The listener on a free port (yielded) for the block, then cancelled."""
    listeners = await server.open_listeners("127.0.0.1:0")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_http, listeners, app)
            yield listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()


BAD_REQUESTS = {
    "no-version": b"GET /metrics\r\n\r\n",
    "not-a-path": b"GET metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form": b"GET http://a/metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    "binary-method": b"\xff / HTTP/1.1\r\nHost: a\r\n\r\n",
    "http-1.1-without-host": b"GET / HTTP/1.1\r\n\r\n",
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
    "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "cut-short": b"GET / HTTP/1.1\r\nHo",  # then the client half-closes
    "head-too-long": b"GET / HTTP/1.1\r\nHost: a\r\n"
    + b"X-Pad: %s\r\n" % (b"p" * server.MAX_HEAD)
    + b"\r\n",
}


@pytest.mark.parametrize("data", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
async def test_what_h11_refuses_is_a_400_then_close(data: bytes) -> None:
    async with _serving() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            await stream.send_eof()
            reply = b""
            while chunk := await stream.receive_some(65536):  # a reset would raise here
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\nConnection: close\r\n" in reply and reply.endswith(b"\r\n\r\nbad request\n")
        assert (await _request(port, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")).endswith(
            b"GET /after"
        )


async def test_requests_h11_accepts() -> None:
    async with _serving() as port:
        query = await _request(port, b"GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert query.startswith(b"HTTP/1.1 200 OK\r\n") and query.endswith(b"GET /metrics")
        old = await _request(port, b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host needed
        assert old.startswith(b"HTTP/1.1 200 OK\r\n") and old.endswith(b"GET /healthz")
        head = await _request(port, b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"\r\nContent-Length: 7\r\n" in head and head.endswith(b"\r\n\r\n")
        post = await _request(port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert b"\r\nAllow: GET, HEAD\r\n" in post
        # any token is a method (h11's rule): 405 rather than the 400 of a malformed line
        assert (await _request(port, b"M-SEARCH / HTTP/1.1\r\nHost: a\r\n\r\n")).startswith(
            b"HTTP/1.1 405 "
        )
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:  # a request dribbled in byte by byte is put together
            for byte in b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n":
                await stream.send_all(bytes([byte]))
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
        assert reply.endswith(b"GET /slow")


async def test_one_response_per_connection_even_when_pipelined_or_kept_alive() -> None:
    two = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n"
    keep = b"GET /keep HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    async with _serving() as port:
        pipelined = await _request(port, two)
        assert pipelined.count(b"HTTP/1.1 ") == 1 and pipelined.endswith(b"GET /one")
        kept = await _request(port, keep)
        assert b"\r\nConnection: close\r\n" in kept and kept.endswith(b"GET /keep")
        # the second request arrives after the answer: still no second answer, and no reset
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
            reply = b""
            while not reply.endswith(b"GET /first"):
                reply += await stream.receive_some(65536)
            await stream.send_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await stream.receive_some(65536) == b""


# -- sd_notify -------------------------------------------------------------------------------


def test_notify_addresses_and_watchdog_settings() -> None:
    assert notify_socket_address({}) is None
    assert notify_socket_address({"NOTIFY_SOCKET": "@sd"}) == "\0sd"
    assert notify_socket_address({"NOTIFY_SOCKET": "/run/x"}) == "/run/x"
    assert notify("READY=1", environ={}) is False
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 0.0005


def test_notify_over_a_path_and_an_abstract_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    abstract = f"tmkms-test-{os.getpid()}"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as by_path,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as by_name,
    ):
        by_path.bind(path)
        by_name.bind("\0" + abstract)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": path})
        assert by_path.recv(100) == b"STOPPING=1"
        ready = ReadyNotifier("serving 2 validator(s)", environ={"NOTIFY_SOCKET": "@" + abstract})
        ready.started()
        assert ready.sent
        assert by_name.recv(100) == b"READY=1\nSTATUS=serving 2 validator(s)"
    assert notify("READY=1", environ={"NOTIFY_SOCKET": path}) is False  # nobody listens now


# -- the state lock --------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from kms.lock import lock_state_files
with lock_state_files([Path(sys.argv[1])], purpose="test"):
    print("held", flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def holding(state_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``state_file``'s lock until it is killed (or the block ends)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state_file)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    with process:
        assert process.stdout is not None
        assert process.stdout.readline() == "held\n"
        try:
            yield process
        finally:
            process.kill()


def test_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    state_file = tmp_path / "s.json"
    assert state_lock_holder(state_file) is None  # no lock file yet: free
    with holding(state_file) as process:
        assert state_lock_holder(state_file) == process.pid
        started = time.monotonic()
        with (
            pytest.raises(StateLockedError) as refused,
            lock_state_files([state_file], wait=0.3, purpose="try later"),
        ):
            pass
        assert time.monotonic() - started >= 0.3  # it retried for the whole wait
        assert refused.value.holder_pid == process.pid
        assert str(refused.value).endswith(f"try later (lock file {state_file}.lock)")
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert state_lock_holder(state_file) is None
    with lock_state_files([state_file, tmp_path / "s.json"], purpose="x") as locks:
        assert locks.paths == [tmp_path / "s.json.lock"]  # one lock per real file
        assert state_lock_holder(state_file) == os.getpid()


def test_lock_waits_for_a_holder_that_exits(tmp_path: Path) -> None:
    state_file = tmp_path / "s.json"
    with holding(state_file) as process:
        started = time.monotonic()
        killer = threading.Timer(0.3, process.kill)
        killer.start()
        with lock_state_files([state_file], wait=10, purpose="x"):
            assert 0.25 <= time.monotonic() - started < 5
        killer.join()


def test_all_or_nothing_and_a_missing_folder(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    with holding(second):
        with pytest.raises(StateLockedError), lock_state_files([first, second], purpose="x"):
            pass
        assert state_lock_holder(first) is None  # the first lock was given back
    missing = tmp_path / "missing" / "s.json"
    with (
        pytest.raises(StateError, match=r"cannot open lock file .*missing/s\.json\.lock"),
        lock_state_files([missing], purpose="x"),
    ):
        pass


def test_metrics_without_prometheus_client_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "kms.ops.exposition")
    monkeypatch.delattr(kms.ops, "exposition")
    with pytest.raises(ConfigError, match=r"pip install 'tmkms-py\[metrics\]'"):
        make_app(KmsMetrics())
