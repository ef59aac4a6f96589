"""The shared watermark's etcd cost: our client against a minimal raw-socket floor.

Run from the repository root: ``python -m benchmarks.bench_etcd [--quick] [--json PATH]``.
It starts a real 3-member etcd cluster on loopback (:mod:`kms.sim.etcd`, with the test
helpers' settings: real WAL fsync, 50 ms heartbeat) and measures, in the same run:

- floor: a bare check-and-set txn (compare ``MOD == rev``, put) over one kept-alive
  connection by a minimal blocking-socket client (one ``sendall`` of a pre-built request, a
  regex for the revision): etcd's own round trip, with next to no client work;
- client txn: the same txn through :class:`kms.ha.client.EtcdClient` (h11 over trio);
- store save: :meth:`SharedWatermarkStore.save` with an in-memory local store: the whole
  check-and-set (the rule, the value with its nonce, the group commit, the reply);
- client CPU per check-and-set (``time.process_time``, this process only: etcd runs in
  its own processes), for each of the above;
- reads of 50 keys: 50 linearizable ranges one after another, 50 at once, and one txn
  holding 50 ranges (what the batcher sends);
- 50 chains saving flat out through one process's group commit: check-and-sets won per
  second, ops per flush, CPU per check-and-set.

Ratios are against the floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from kms.chain.state import BlockRef, SignState
from kms.config.etcd import EtcdSettings
from kms.ha.admin import create_watermark
from kms.ha.batch import TxnBatcher
from kms.ha.client import EtcdClient, encode
from kms.ha.shared import SharedWatermarks
from kms.ha.store import SharedWatermarkStore
from kms.ha.wire import b64
from kms.sim.etcd import LocalEtcd, find_etcd

BLOCK = BlockRef(b"\xab" * 32, 1, b"\xcd" * 32)
_REVISION = re.compile(rb'"revision":"(\d+)"')


class MemoryState:
    """A local StateStore that keeps the state in memory (the etcd part alone is measured)."""

    def __init__(self) -> None:
        self.state = SignState.INITIAL

    def describe(self) -> str:
        return "memory"

    async def load(self) -> SignState:
        return self.state

    async def save(self, state: SignState) -> None:
        self.state = state


def cas_body(key: bytes, revision: int, value: bytes) -> bytes:
    k = b64(key)
    compare = (
        {"result": "EQUAL", "target": "MOD", "key": k, "mod_revision": str(revision)}
        if revision
        else {"result": "EQUAL", "target": "CREATE", "key": k, "create_revision": "0"}
    )
    return encode(
        {
            "compare": [compare],
            "success": [{"request_put": {"key": k, "value": b64(value)}}],
            "failure": [{"request_range": {"key": k}}],
        }
    )


def raw_floor(port: int, count: int) -> tuple[list[float], float]:
    """Bare CAS txns by a minimal blocking client: latencies, and CPU seconds per txn."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key, revision, latencies = b"/bench/floor/" + uuid.uuid4().hex.encode(), 0, []
    cpu = time.process_time()
    for index in range(count):
        body = cas_body(key, revision, b"v%d" % index)
        request = (
            b"POST /v3/kv/txn HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        started = time.perf_counter()
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            reply += sock.recv(65536)
        latencies.append(time.perf_counter() - started)
        match = _REVISION.findall(reply)
        if b'"succeeded":true' not in reply or not match:
            raise RuntimeError(f"floor txn failed: {reply[-200:]!r}")
        revision = int(match[-1])
    cpu = time.process_time() - cpu
    sock.close()
    return latencies, cpu / count


async def client_txns(endpoint: str, count: int) -> tuple[list[float], float]:
    """The same CAS txns through EtcdClient."""
    async with EtcdClient([endpoint]) as client:
        key, revision, latencies = b"/bench/client/" + uuid.uuid4().hex.encode(), 0, []
        await client.range(key)  # connect first
        cpu = time.process_time()
        for index in range(count):
            started = time.perf_counter()
            result = await client.txn(cas_body(key, revision, b"v%d" % index))
            latencies.append(time.perf_counter() - started)
            assert result.succeeded and isinstance(result.responses[0], int)
            revision = result.responses[0]
        return latencies, (time.process_time() - cpu) / count


async def store_saves(endpoints: list[str], count: int) -> tuple[list[float], float]:
    """Whole check-and-sets: SharedWatermarkStore.save with a memory local store."""
    async with EtcdClient(endpoints) as client:
        store = SharedWatermarkStore(
            MemoryState(), chain_id="store", client=client, host="bench", prefix="/bench/"
        )
        await create_watermark(client, store.key, SignState.INITIAL, "bench")
        await store.save(SignState(1, 0, 0, BLOCK))  # first contact: reconcile, connect
        latencies = []
        cpu = time.process_time()
        for index in range(count):
            started = time.perf_counter()
            await store.save(SignState(2 + index, 0, 1, BLOCK))
            latencies.append(time.perf_counter() - started)
        return latencies, (time.process_time() - cpu) / count


async def reads(endpoint: str, keys: int, repeats: int) -> dict[str, float]:
    """Milliseconds to read ``keys`` keys: one by one, all at once, one txn of ranges."""
    names = [f"/bench/read/{i}".encode() for i in range(keys)]
    body = encode({"success": [{"request_range": {"key": b64(k)}} for k in names]})
    out: dict[str, list[float]] = {"sequential_ms": [], "concurrent_ms": [], "one_txn_ms": []}
    async with EtcdClient([endpoint]) as client:
        await client.range(names[0])
        for _ in range(repeats):
            started = time.perf_counter()
            for k in names:
                await client.range(k)
            out["sequential_ms"].append(time.perf_counter() - started)
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for k in names:
                    nursery.start_soon(client.range, k)
            out["concurrent_ms"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.txn(body)
            out["one_txn_ms"].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1e3 for name, values in out.items()}


async def many_chains(endpoints: list[str], chains: int, seconds: float) -> dict[str, float]:
    """``chains`` chains saving flat out through one hub's group commit."""
    hub = SharedWatermarks(EtcdSettings(endpoints, prefix="/bench/many/", host="bench"))
    stores = [hub.store(f"chain-{i}", MemoryState()) for i in range(chains)]
    for store in stores:
        await create_watermark(hub.client, store.key, SignState.INITIAL, "bench")
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(store.save, SignState(1, 0, 0, BLOCK))
    won = 0
    flushes, ops = hub.batcher.flushes, hub.batcher.flushed_ops

    async def loop(store: SharedWatermarkStore, stop: float) -> None:
        nonlocal won
        height = 2
        while time.perf_counter() < stop:
            await store.save(SignState(height, 0, 1, BLOCK))
            won += 1
            height += 1

    cpu, started = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(loop, store, started + seconds)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await hub.aclose()
    batcher: TxnBatcher = hub.batcher
    return {
        "chains": chains,
        "cas_per_s": won / elapsed,
        "ops_per_flush": (batcher.flushed_ops - ops) / max(1, batcher.flushes - flushes),
        "cpu_us_per_cas": cpu / won * 1e6,
        "process_cpu_share": cpu / elapsed,
    }


def _ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3,
    }


def run(quick: bool) -> dict[str, Any]:
    count = 300 if quick else 2000
    seconds = 3.0 if quick else 10.0
    binary = find_etcd()
    if binary is None:
        raise SystemExit("no etcd binary on PATH (Debian: etcd-server), nor ETCD_BINARY")
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalEtcd(binary, Path(folder))
        started = time.monotonic()
        leader = cluster.start()
        startup = time.monotonic() - started
        try:
            order = [leader] + [i for i in range(3) if i != leader]
            endpoints = [cluster.endpoints[i] for i in order]
            port = cluster.members[leader].client_port
            floor, floor_cpu = raw_floor(port, count)
            txns, txn_cpu = trio.run(client_txns, endpoints[0], count)
            saves, save_cpu = trio.run(store_saves, endpoints, count)
            read_ms = trio.run(reads, endpoints[0], 50, 5 if quick else 20)
            many = trio.run(many_chains, endpoints, 50, seconds)
        finally:
            cluster.close()
    floor_p50 = statistics.median(floor)

    def row(samples: list[float], cpu: float) -> dict[str, float]:
        return _ms(samples) | {
            "ratio_p50": statistics.median(samples) / floor_p50,
            "cpu_us_per_cas": cpu * 1e6,
        }

    return {
        "cluster_startup_s": startup,
        "floor_bare_txn": _ms(floor) | {"cpu_us_per_cas": floor_cpu * 1e6},
        "client_txn": row(txns, txn_cpu),
        "store_save": row(saves, save_cpu),
        "reads_50_keys": read_ms,
        "many_chains": many,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results = run(args.quick)
    for name, figures in results.items():
        if isinstance(figures, dict):
            shown = "  ".join(f"{k}={v:.3f}" for k, v in figures.items())
            print(f"{name:16} {shown}")
        else:
            print(f"{name:16} {figures:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
