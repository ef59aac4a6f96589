"""The end-to-end benchmarks with ``[etcd]`` (high availability), for ``python -m benchmarks``.

Run only where an ``etcd`` binary is installed (``kms.sim.etcd.find_etcd``). In one run:

- a 3-member etcd cluster on loopback (:mod:`kms.sim.etcd`: real WAL fsync);
- etcd floor: the median of a bare check-and-set txn (compare ``MOD == rev``, put) by a
  minimal blocking-socket client to the leader (:func:`benchmarks.bench_etcd.raw_floor`),
  measured just before and just after the KMS runs;
- one chain with ``[etcd]``: sequential requests through the real `tmkms start`, timed at
  the node's socket as the single-host row; the ratio is p50 over (single-host floor +
  etcd floor);
- 50 chains with ``[etcd]`` in one process, flat out: signatures/s, and proof that every
  signature was covered by a won check-and-set: the nodes' signed replies, the KMS's
  ``tmkms_ha_cas_total{outcome="won"}`` and the etcd keys' ``version`` (writes since each
  key was created) must all agree; the cluster's revision gives the txns per second (one
  revision per txn that wrote: the group commit's flushes);
- client CPU per check-and-set, in this process with etcd in its own (the functions of
  :mod:`benchmarks.bench_etcd`, ``time.process_time``): the bare txn's minimal client, one
  txn through ``EtcdClient``, a whole check-and-set (``SharedWatermarkStore.save`` with an
  in-memory local state), and 50 chains' check-and-sets through one group commit;
- beside them, the KMS process's CPU per signature (``/proc/<pid>/stat``) with ``[etcd]``
  and without (the single-host 50-chain row). Their difference is *not* the client's cost:
  with ``[etcd]`` each signature waits longer, so the local writer commits larger groups and
  spends less per state save, which hides part of the client's CPU.

The KMS lists the leader first among its endpoints, as the floor's client talks to the
leader: a txn sent to a follower is forwarded to the leader (one more hop), which a client
sticking to whichever member answered pays only until the leader changes.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from benchmarks import bench_etcd
from benchmarks.bench_etcd import raw_floor
from benchmarks.harness import (
    Signing,
    connect_all,
    kms_with_nodes,
    percentile,
    process_cpu_s,
    summary_ms,
)
from kms.chain.state import SignState
from kms.ha.admin import create_watermark
from kms.ha.client import EtcdClient
from kms.ha.watermark import watermark_key
from kms.sim.etcd import LocalEtcd, find_etcd, free_ports

PREFIX = "/tmkms-bench/"
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def etcd_toml(endpoints: list[str], metrics_port: int) -> str:
    """The ``[etcd]`` and ``[metrics]`` sections of the KMS under test."""
    urls = ", ".join(f'"{url}"' for url in endpoints)
    return (
        f'[etcd]\nendpoints = [{urls}]\nprefix = "{PREFIX}"\nhost = "bench"\n\n'
        f'[metrics]\nbind_address = "127.0.0.1:{metrics_port}"\n'
    )


def cas_counts(metrics_port: int) -> dict[str, float]:
    """``tmkms_ha_cas_total`` summed by outcome (``won``, ``lost``, ``refused:<cause>``)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != "tmkms_ha_cas_total":
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        outcome = labels["outcome"] + (f":{labels['cause']}" if labels.get("cause") else "")
        counts[outcome] = counts.get(outcome, 0.0) + float(match.group(3))
    return counts


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body))
        doc = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert isinstance(doc, dict), doc
    return doc


def key_versions(port: int) -> dict[str, int]:
    """Every key under the prefix and its ``version`` (writes since it was created)."""
    end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
    doc = _post(
        port,
        "/v3/kv/range",
        {
            "key": base64.b64encode(PREFIX.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode(),
        },
    )
    return {
        base64.b64decode(kv["key"]).decode(): int(kv.get("version", 0)) for kv in doc.get("kvs", [])
    }


def cluster_revision(port: int) -> int:
    """The cluster's current revision (one more per txn that wrote anything)."""
    return int(_post(port, "/v3/maintenance/status", {})["header"]["revision"])


async def bare_txn_floor(port: int, count: int) -> tuple[list[float], float]:
    """The etcd floor: bare CAS txns by the minimal client (in a thread: it blocks)."""
    return await trio.to_thread.run_sync(raw_floor, port, count)


async def init_watermarks(endpoints: list[str], chains: list[str]) -> None:
    """Create the chains' watermarks, as `tmkms state init` does (start never creates them)."""
    async with EtcdClient(endpoints) as client:
        for chain in chains:
            key = watermark_key(PREFIX, chain)
            await create_watermark(client, key, SignState.INITIAL, "bench-init")


async def single_chain(endpoints: list[str], heights: int) -> dict[str, Any]:
    """One chain with ``[etcd]``: sequential requests, p50/p99, every one a won CAS."""
    metrics_port = free_ports(1)[0]
    await init_watermarks(endpoints, ["bench-ha"])
    async with kms_with_nodes(["bench-ha"], etcd_toml(endpoints, metrics_port)) as (home, _p):
        (client,) = await connect_all(home)
        signing = Signing(client)
        for _ in range(min(50, heights)):  # warm up: first contact, connections
            await signing.one_height()
        warm_requests = len(signing.latencies)
        signing.latencies.clear()
        for _ in range(heights):
            await signing.one_height()
        counts = await trio.to_thread.run_sync(cas_counts, metrics_port)
    signed = warm_requests + len(signing.latencies) - signing.errors
    return {
        "requests": len(signing.latencies),
        "errors": signing.errors,
        "signed_requests": signed,
        "cas": counts,
        "every_signature_won_a_cas": counts.get("won") == signed,
    } | summary_ms(signing.latencies)


async def many_chains(
    endpoints: list[str], leader_port: int, count: int, seconds: float, etcd_pids: list[int]
) -> dict[str, Any]:
    """``count`` chains with ``[etcd]`` in one process, flat out.

    Also the CPU of everything on the machine during the run, in cores: the KMS, the etcd
    members (``etcd_pids``), and this process (the 50 simulated nodes).
    """
    chains = [f"ha-{i}" for i in range(count)]
    metrics_port = free_ports(1)[0]
    await init_watermarks(endpoints, chains)
    async with kms_with_nodes(chains, etcd_toml(endpoints, metrics_port)) as (home, process):
        signings = [Signing(c) for c in await connect_all(home)]
        async with trio.open_nursery() as nursery:  # warm up: every chain's first contact
            for signing in signings:
                nursery.start_soon(signing.one_height)
        warm = sum(len(s.latencies) - s.errors for s in signings)
        for signing in signings:
            signing.latencies.clear()
            signing.errors = 0
        revision = await trio.to_thread.run_sync(cluster_revision, leader_port)
        cpu, started = process_cpu_s(process.pid), time.perf_counter()
        etcd_cpu, nodes_cpu = sum(map(process_cpu_s, etcd_pids)), time.process_time()
        stop = started + seconds

        async def run(signing: Signing) -> None:
            while time.perf_counter() < stop:
                await signing.one_height()

        async with trio.open_nursery() as nursery:
            for signing in signings:
                nursery.start_soon(run, signing)
        elapsed = time.perf_counter() - started
        cpu = process_cpu_s(process.pid) - cpu
        etcd_cpu = sum(map(process_cpu_s, etcd_pids)) - etcd_cpu
        nodes_cpu = time.process_time() - nodes_cpu
        txns = await trio.to_thread.run_sync(cluster_revision, leader_port) - revision
        counts = await trio.to_thread.run_sync(cas_counts, metrics_port)
        versions = await trio.to_thread.run_sync(key_versions, leader_port)
    latencies = [t for s in signings for t in s.latencies]
    errors = sum(s.errors for s in signings)
    signed = len(latencies) - errors
    # each key: created once by init_watermarks, then one write per won check-and-set
    key_writes = sum(v - 1 for k, v in versions.items() if k[len(PREFIX) :] in chains)
    covered = counts.get("won") == warm + signed == key_writes
    return {
        "chains": count,
        "signatures_per_s": signed / elapsed,
        "saturated": summary_ms(latencies),
        "errors": errors,
        "signed_requests": warm + signed,
        "cas": counts,
        "etcd_key_writes": key_writes,
        "every_signature_won_a_cas": covered,
        "etcd_txns_per_s": txns / elapsed,
        "cas_per_txn": signed / txns if txns else float("nan"),
        "kms_cpu_us_per_signature": cpu / signed * 1e6,
        "kms_cpu_share": cpu / elapsed,
        "etcd_cpu_share": etcd_cpu / elapsed,
        "nodes_cpu_share": nodes_cpu / elapsed,
    }


async def run_ha(quick: bool, single_host_cpu_us: float | None) -> dict[str, Any] | None:
    """Every ``[etcd]`` benchmark, or None when no etcd binary is installed."""
    binary = find_etcd()
    if binary is None:
        return None
    count = 300 if quick else 1500
    with tempfile.TemporaryDirectory(prefix="kms-bench-etcd-") as folder:
        cluster = LocalEtcd(binary, Path(folder))
        try:
            leader = await trio.to_thread.run_sync(cluster.start)
            order = [leader] + [i for i in range(len(cluster.members)) if i != leader]
            endpoints = [cluster.endpoints[i] for i in order]
            port = cluster.members[leader].client_port
            before, before_cpu = await bare_txn_floor(port, count)
            single = await single_chain(endpoints, 200 if quick else 1500)
            after, after_cpu = await bare_txn_floor(port, count)
            pids = [m.pid for m in cluster.members if m.pid is not None]
            many = await many_chains(endpoints, port, 50, 3.0 if quick else 10.0, pids)
            client = await client_cpu(endpoints, count, 3.0 if quick else 10.0)
            still_leader = await trio.to_thread.run_sync(cluster.wait_leader)
        finally:
            cluster.close()
    floor = before + after
    results: dict[str, Any] = {
        "etcd_floor_txn_ms": statistics.median(floor) * 1e3,
        "etcd_floor_txn_p99_ms": percentile(floor, 0.99) * 1e3,
        "etcd_floor_txn_before_ms": statistics.median(before) * 1e3,
        "etcd_floor_txn_after_ms": statistics.median(after) * 1e3,
        "etcd_floor_cpu_us_per_txn": (before_cpu + after_cpu) / 2 * 1e6,
        "leader_unchanged": still_leader == leader,
        "single_chain": single,
        "many_chains": many,
        "client_cpu_us_per_cas": client,
        "single_host_cpu_us_per_signature": single_host_cpu_us,
    }
    return results


async def client_cpu(endpoints: list[str], count: int, seconds: float) -> dict[str, float]:
    """Client CPU per check-and-set (this process; etcd runs in its own processes)."""
    txns, txn_cpu = await bench_etcd.client_txns(endpoints[0], count)
    saves, save_cpu = await bench_etcd.store_saves(endpoints, count)
    many = await bench_etcd.many_chains(endpoints, 50, seconds)
    return {
        "client_txn_us": txn_cpu * 1e6,
        "client_txn_p50_ms": statistics.median(txns) * 1e3,
        "store_save_us": save_cpu * 1e6,
        "store_save_p50_ms": statistics.median(saves) * 1e3,
        "group_commit_50_chains_us": many["cpu_us_per_cas"],
        "group_commit_cas_per_s": many["cas_per_s"],
        "group_commit_ops_per_flush": many["ops_per_flush"],
    }


def report_ha(results: dict[str, Any] | None, floor_ms: float) -> None:
    """Print the ``[etcd]`` rows (or why there are none)."""
    if results is None:
        print(
            "[etcd]: no etcd binary installed (Debian: etcd-server): high-availability rows skipped"
        )
        return
    etcd_ms = results["etcd_floor_txn_ms"]
    single = results["single_chain"]
    print(
        f"[etcd] floor: bare check-and-set txn {etcd_ms:.3f} ms (p99 "
        f"{results['etcd_floor_txn_p99_ms']:.3f}; before {results['etcd_floor_txn_before_ms']:.3f}"
        f", after {results['etcd_floor_txn_after_ms']:.3f}); + single-host floor "
        f"{floor_ms:.3f} = {etcd_ms + floor_ms:.3f} ms"
    )
    print(
        f"[etcd] one chain ({single['requests']} requests): p50 {single['p50_ms']:.3f} ms "
        f"(ratio {single['p50_ms'] / (etcd_ms + floor_ms):.2f}), p99 {single['p99_ms']:.3f} ms "
        f"(ratio {single['p99_ms'] / (etcd_ms + floor_ms):.2f}); every signature a won "
        f"check-and-set: {single['every_signature_won_a_cas']} ({single['cas']})"
    )
    many = results["many_chains"]
    print(
        f"[etcd] {many['chains']} chains flat out: {many['signatures_per_s']:.0f} signatures/s, "
        f"{many['etcd_txns_per_s']:.0f} txns/s ({many['cas_per_txn']:.1f} check-and-sets per "
        f"txn), p50 {many['saturated']['p50_ms']:.2f} ms; every signature a won check-and-set: "
        f"{many['every_signature_won_a_cas']} ({many['signed_requests']} signed, "
        f"{many['cas']}, {many['etcd_key_writes']} key writes)"
    )
    client = results["client_cpu_us_per_cas"]
    print(
        f"[etcd] client CPU per check-and-set: bare txn (raw socket) "
        f"{results['etcd_floor_cpu_us_per_txn']:.0f} us, EtcdClient txn "
        f"{client['client_txn_us']:.0f} us, whole check-and-set {client['store_save_us']:.0f} us"
        f" (p50 {client['store_save_p50_ms']:.3f} ms alone, local state in memory), 50 chains "
        f"through the group commit {client['group_commit_50_chains_us']:.0f} us "
        f"({client['group_commit_ops_per_flush']:.1f} per txn, "
        f"{client['group_commit_cas_per_s']:.0f}/s)"
    )
    without = results["single_host_cpu_us_per_signature"]
    print(
        f"[etcd] KMS process CPU per signature, 50 chains flat out: "
        f"{many['kms_cpu_us_per_signature']:.0f} us with [etcd]"
        + (f", {without:.0f} us without" if without is not None else "")
        + f"; cores busy meanwhile: KMS {many['kms_cpu_share']:.2f}, etcd members "
        f"{many['etcd_cpu_share']:.2f}, the 50 nodes {many['nodes_cpu_share']:.2f}"
    )
