"""What metrics cost: the recording on the sign path (a few microseconds at most), and a scrape.

The sign path pays four ``perf_counter`` calls in the tracker, three histogram observations
and one signature count in the handler; this times exactly that sequence, best of several
batches (the least disturbed by the rest of the machine). Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import time

from kms.chain.state import Refusal
from kms.chain.tracker import DoubleSignRefused
from kms.ops import KmsMetrics, ValidatorMetrics
from kms.ops.exposition import build_registry, render

BATCH = 20_000
BATCHES = 5
#: The budget per signature ("a few microseconds"); typical measurements are ~1 us.
BUDGET_SECONDS = 5e-6


def _record_batch(v: ValidatorMetrics) -> float:
    clock = time.perf_counter
    started = clock()
    for height in range(BATCH):
        queued = clock()
        locked = clock()
        written = clock()
        done = clock()
        v.observe_sign(locked - queued, written - locked, done - written)
        v.signed(1, height, 0)
    return (clock() - started) / BATCH


def _empty_batch() -> float:
    clock = time.perf_counter
    started = clock()
    for _ in range(BATCH):
        pass
    return (clock() - started) / BATCH


def test_recording_a_signature_costs_a_few_microseconds_at_most() -> None:
    v = KmsMetrics().validator("c-1", "tcp://127.0.0.1:26659", "softsign")
    per_signature = min(_record_batch(v) for _ in range(BATCHES))
    loop = min(_empty_batch() for _ in range(BATCHES))
    cost = per_signature - loop
    print(f"\nmetrics recording per signature: {cost * 1e9:.0f} ns")
    assert v.signatures["prevote"] == BATCH * BATCHES
    assert v.latency[0].count == BATCH * BATCHES
    assert 0 < cost < BUDGET_SECONDS


def test_a_refusal_costs_no_more() -> None:
    v = ValidatorMetrics("c-1", "tcp://127.0.0.1:26659")
    refusal = DoubleSignRefused("double signing requested", Refusal.HEIGHT_REGRESSION, "x")
    best = float("inf")
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(BATCH):
            v.failed(refusal)
        best = min(best, (time.perf_counter() - started) / BATCH)
    print(f"\nmetrics recording per refusal: {best * 1e9:.0f} ns")
    assert v.refusals["height_regression"] == BATCH * BATCHES
    assert best < BUDGET_SECONDS


def test_a_scrape_of_fifty_validators_is_quick() -> None:
    """Rendering runs on the event loop: it must stay far below a block's time budget."""
    metrics = KmsMetrics()
    for index in range(50):
        v = metrics.validator(f"chain-{index % 5}", f"tcp://10.0.0.{index}:26659", "softsign")
        v.signed(2, index, 0)
        v.observe_sign(0.0001, 0.002, 0.00005)
    registry = build_registry(metrics)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        text = render(registry)
        best = min(best, time.perf_counter() - started)
    print(f"\n/metrics for 50 validators: {len(text)} bytes in {best * 1000:.2f} ms")
    assert text.count(b"tmkms_signatures_total{") == 50 * 5
    assert best < 0.05
