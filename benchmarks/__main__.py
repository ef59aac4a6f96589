"""End-to-end benchmarks of the real `tmkms start` process against simulated nodes.

Run from the repository root: ``python -m benchmarks [--quick] [--ha-only] [--json PATH]``.

Every figure is measured in the same run as its floor, because these machines are noisy:
- sign latency: sequential SignProposal/SignVote round trips over Secret Connection, timed
  at the node's socket, against floor = one Ed25519 signature + one durable state write
  (temp file, fsync, rename, fsync of the folder) + one trio loopback round trip to another
  process; ``ratio = p50 / floor`` (and p99 / floor, beside the floor write's own p99);
- many chains: N chains in one process, one node each, all signing at once;
- reconnect: from the node dropping the connection to the next signature;
- handshake: from accept() to an established Secret Connection, as the node sees it;
- with an ``etcd`` binary installed, the same with ``[etcd]`` (:mod:`benchmarks.ha`): one
  chain's p50 against floor + a bare etcd check-and-set txn, 50 chains' signatures/s with
  every signature covered by a won check-and-set, and the KMS's CPU per check-and-set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.ha import report_ha, run_ha
from benchmarks.harness import (
    CONNECT_TIMEOUT,
    Signing,
    connect_all,
    durable_write_samples,
    ed25519_sign_s,
    kms_with_nodes,
    loopback_round_trip_s,
    peak_rss_mb,
    percentile,
    process_cpu_s,
    state_save_samples,
    summary_ms,
)

# Paced phase: each chain asks 30 times a second (a 100 ms block: proposal, prevote,
# precommit), so 50 chains make the 1,500 signatures/s of the many-chain target.
PER_CHAIN_RATE = 30.0


async def floor() -> dict[str, float]:
    """The physical floor of one signature on this machine, and its parts.

    Also the floor's durable write at p99: the disk's own tail, which no signer can beat.
    """
    sign = ed25519_sign_s()
    writes = durable_write_samples()
    write = statistics.median(writes)
    rtt = await loopback_round_trip_s()
    return {
        "ed25519_sign_ms": sign * 1e3,
        "durable_write_ms": write * 1e3,
        "durable_write_p99_ms": percentile(writes, 0.99) * 1e3,
        "loopback_rtt_ms": rtt * 1e3,
        "floor_ms": (sign + write + rtt) * 1e3,
    }


async def sign_latency(heights: int) -> dict[str, Any]:
    """Sequential requests on one chain: p50/p99/max latency."""
    async with kms_with_nodes(["bench-1"]) as (home, _process):
        (client,) = await connect_all(home)
        signing = Signing(client)
        for _ in range(min(50, heights)):  # warm up
            await signing.one_height()
        signing.latencies.clear()
        for _ in range(heights):
            await signing.one_height()
    # The disk's tail in the same minute: as many of the KMS's state saves, alone (no
    # network, no request handling). A signature cannot be faster than its save.
    saves = state_save_samples(len(signing.latencies))
    return {
        "requests": len(signing.latencies),
        "errors": signing.errors,
        "state_save_alone_p50_ms": statistics.median(saves) * 1e3,
        "state_save_alone_p99_ms": percentile(saves, 0.99) * 1e3,
    } | summary_ms(signing.latencies)


async def many_chains(count: int, seconds: float, per_chain_rate: float) -> dict[str, Any]:
    """``count`` chains in one process, one node each, all signing at once.

    Two phases on the same process. Flat out (each node sends its next request as soon as
    it has the last reply) measures the capacity in signatures/s. Paced (each chain at
    ``per_chain_rate`` requests/s, starts staggered) measures the latency at that load:
    flat out, latency is only the number of requests in flight over the capacity (Little's
    law), which is why it is measured separately.
    """
    chains = [f"chain-{i}" for i in range(count)]
    async with kms_with_nodes(chains) as (home, process):
        clients = await connect_all(home)
        flat_out = [Signing(c) for c in clients]
        cpu = process_cpu_s(process.pid)
        rate, latencies = await _run_all(flat_out, seconds, interval=0.0)
        cpu = process_cpu_s(process.pid) - cpu
        per_chain_interval = 1.0 / per_chain_rate
        paced = [Signing(c, height=s.height) for c, s in zip(clients, flat_out, strict=True)]
        for index, signing in enumerate(paced):  # stagger the chains over one interval
            signing.due = time.perf_counter() + per_chain_interval * index / count
        paced_rate_seen, paced_latencies = await _run_all(paced, seconds, per_chain_interval)
        return {
            "chains": count,
            "signatures_per_s": rate,
            "saturated": summary_ms(latencies),
            "paced_target_per_s": per_chain_rate * count,
            "paced_per_s": paced_rate_seen,
            "paced": summary_ms(paced_latencies),
            "errors": sum(s.errors for s in flat_out + paced),
            "cpu_us_per_signature": cpu / len(latencies) * 1e6,  # flat out
            "peak_rss_mb": peak_rss_mb(process.pid),
        }


async def _run_all(
    signings: list[Signing], seconds: float, interval: float
) -> tuple[float, list[float]]:
    """Run every signing loop for ``seconds``; aggregate rate and all latencies.

    Each loop finishes the height it is in rather than being cancelled: a request cut off
    mid-exchange would leave its reply in the socket, and the next phase would read it as
    the reply to its own first request (one reply behind from then on).
    """
    started = time.perf_counter()
    stop = started + seconds

    async def run(signing: Signing) -> None:
        while time.perf_counter() < stop:
            await signing.one_height(interval)

    async with trio.open_nursery() as nursery:
        for signing in signings:
            nursery.start_soon(run, signing)
    elapsed = time.perf_counter() - started
    latencies = [t for s in signings for t in s.latencies]
    return len(latencies) / elapsed, latencies


async def reconnect(rounds: int) -> dict[str, Any]:
    """The node drops the connection; time until the next signature is back."""
    samples = []
    handshakes = []
    async with kms_with_nodes(["bench-r"]) as (home, _process):
        node = home.nodes["bench-r"]
        with trio.fail_after(CONNECT_TIMEOUT):
            client = await node.accept()
        signing = Signing(client)
        await signing.one_height()
        for _ in range(rounds):
            await client.aclose()
            dropped = time.perf_counter()
            with trio.fail_after(CONNECT_TIMEOUT):
                client = await node.accept()
            handshakes.append(client.handshake_seconds)
            signing.client = client
            await signing.one_height()  # proposal first: its reply is the next signature
            samples.append(time.perf_counter() - dropped - sum(signing.latencies[-2:]))
    return {
        "reconnects": rounds,
        "median_ms": statistics.median(samples) * 1e3,
        "max_ms": max(samples) * 1e3,
        "handshake_median_ms": statistics.median(handshakes) * 1e3,
    }


def report_floor(fl: dict[str, float]) -> None:
    """Print the floor line."""
    print(
        f"floor: {fl['floor_ms']:.3f} ms = Ed25519 {fl['ed25519_sign_ms']:.3f} + durable write "
        f"{fl['durable_write_ms']:.3f} + loopback RTT {fl['loopback_rtt_ms']:.3f} "
        f"(durable write p99 {fl['durable_write_p99_ms']:.3f} ms = "
        f"{fl['durable_write_p99_ms'] / fl['floor_ms']:.2f} x floor)"
    )


def report(results: dict[str, Any]) -> None:
    """Print the results as a table."""
    fl = results["floor"]
    report_floor(fl)
    sl = results["sign_latency"]
    print(
        f"sign latency ({sl['requests']} requests): p50 {sl['p50_ms']:.3f} ms "
        f"(ratio {sl['p50_ms'] / fl['floor_ms']:.2f}), p99 {sl['p99_ms']:.3f} ms "
        f"(ratio {sl['p99_ms'] / fl['floor_ms']:.2f}), max {sl['max_ms']:.3f} ms"
    )
    print(
        f"  right after, as many state saves alone (spare exchange): "
        f"p50 {sl['state_save_alone_p50_ms']:.3f} ms, p99 {sl['state_save_alone_p99_ms']:.3f} ms "
        f"(ratio {sl['state_save_alone_p99_ms'] / fl['floor_ms']:.2f})"
    )
    print(
        f"{'chains':>7} {'max sig/s':>10} {'paced sig/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'RSS MB':>8}"
    )
    for row in results["many_chains"]:
        paced = row["paced"]
        print(
            f"{row['chains']:>7} {row['signatures_per_s']:>10.0f} {row['paced_per_s']:>12.0f} "
            f"{paced['p50_ms']:>8.2f} {paced['p99_ms']:>8.2f} {paced['max_ms']:>8.2f} "
            f"{row['peak_rss_mb']:>8.1f}"
        )
    report_ha(results["ha"], fl["floor_ms"])
    rc = results["reconnect"]
    print(
        f"reconnect: next signature {rc['median_ms']:.1f} ms after a drop (median of "
        f"{rc['reconnects']}, max {rc['max_ms']:.1f}); handshake {rc['handshake_median_ms']:.2f} ms"
    )


async def run_all(quick: bool) -> dict[str, Any]:
    """Every benchmark, with sizes reduced by ``quick``."""
    results: dict[str, Any] = {"floor": await floor()}
    results["sign_latency"] = await sign_latency(200 if quick else 1500)
    results["many_chains"] = [
        await many_chains(n, 3.0 if quick else 10.0, PER_CHAIN_RATE)
        for n in ((1, 10) if quick else (1, 10, 50))
    ]
    results["reconnect"] = await reconnect(5 if quick else 20)
    fifty = [row for row in results["many_chains"] if row["chains"] == 50]
    cpu = fifty[0]["cpu_us_per_signature"] if fifty else None
    results["ha"] = await run_ha(quick, cpu)
    results["floor_after"] = await floor()
    return results


async def run_ha_only(quick: bool) -> dict[str, Any]:
    """The floor and the ``[etcd]`` benchmarks only (the KMS's CPU without etcd not measured)."""
    results: dict[str, Any] = {"floor": await floor()}
    results["ha"] = await run_ha(quick, None)
    results["floor_after"] = await floor()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    parser.add_argument(
        "--ha-only", action="store_true", help="only the floor and the [etcd] rows (needs etcd)"
    )
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/latest[-ha].json")
    args = parser.parse_args(argv)
    if args.json is None:
        name = "latest-ha.json" if args.ha_only else "latest.json"
        args.json = Path("benchmarks/results") / name
    if args.ha_only:
        results = trio.run(run_ha_only, args.quick)
        report_floor(results["floor"])
        report_ha(results["ha"], results["floor"]["floor_ms"])
    else:
        results = trio.run(run_all, args.quick)
        report(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
