"""The state writer: inline when the process is idle, in threads under load or after a stall."""

from __future__ import annotations

import functools
import threading
import time

import trio

from kms.chain.writer import StateWriter


def _on_loop_thread(main: int) -> bool:
    return threading.get_ident() == main


async def test_writes_inline_when_nothing_else_is_runnable() -> None:
    writer = StateWriter()
    main = threading.get_ident()
    assert await writer.run(lambda: _on_loop_thread(main), key="c")
    assert (writer.inline_writes, writer.threaded_writes) == (1, 0)


async def test_chains_writing_together_use_threads() -> None:
    writer = StateWriter()
    main = threading.get_ident()
    places: list[bool] = []

    async def write(chain: str) -> None:
        places.append(await writer.run(lambda: _on_loop_thread(main), key=chain))

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(write, f"chain-{index}")
    assert places.count(False) >= 3, "all but the first of chains writing together use threads"


async def test_one_chain_writing_back_to_back_stays_inline() -> None:
    writer = StateWriter()
    main = threading.get_ident()
    for _ in range(5):
        assert await writer.run(lambda: _on_loop_thread(main), key="only")
    assert writer.inline_writes == 5


async def test_concurrent_threaded_writes_overlap() -> None:
    writer = StateWriter(trio.CapacityLimiter(8), slow_write=1.0)
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(functools.partial(writer.run, slow, key=f"chain-{index}"))
    assert peak >= 4
    assert writer.threaded_writes >= 5
    assert time.monotonic() - started < 6 * 0.05


async def test_a_slow_inline_write_sends_writes_to_threads_for_the_cool_down() -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    def stall() -> None:
        now[0] += 0.5  # the disk took half a second

    writer = StateWriter(slow_write=0.005, cool_down=30.0, clock=clock)
    main = threading.get_ident()
    await writer.run(stall, key="c")
    assert writer.inline_writes == 1
    assert not await writer.run(lambda: _on_loop_thread(main), key="c")
    now[0] += 31.0
    assert await writer.run(lambda: _on_loop_thread(main), key="c")


async def test_inline_false_always_uses_threads() -> None:
    writer = StateWriter(inline=False)
    main = threading.get_ident()
    assert not await writer.run(lambda: _on_loop_thread(main), key="c")
    assert writer.threaded_writes == 1
