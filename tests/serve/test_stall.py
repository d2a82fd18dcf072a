"""ExchangeClock on its own: the head deadline, idleness, and cancellations that are not its
own. Durations are tens of milliseconds; the sleeps are the simulated work's pace."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.serve.stall import ExchangeClock

IDLE_S = 0.05
PACE_S = 0.01  # a moving stream: a fifth of the idle timeout
STEPS = 20  # 20 x 10 ms: four times the idle timeout


async def test_a_stream_that_moves_outlives_both_clocks() -> None:
    clock = ExchangeClock(IDLE_S, IDLE_S)
    async with clock:
        clock.expect_progress()
        for _ in range(STEPS):
            await asyncio.sleep(PACE_S)
            clock.touch()
    assert not clock.fired


async def test_a_stall_times_out_as_idle() -> None:
    clock = ExchangeClock(10.0, IDLE_S)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        async with clock:
            clock.expect_progress()
            clock.touch()
            await asyncio.sleep(10.0)  # nothing moves
    assert clock.fired and clock.stalled
    assert IDLE_S <= loop.time() - t0 < 1.0


async def test_no_head_times_out_as_the_head_clock() -> None:
    clock = ExchangeClock(IDLE_S, 10.0)
    with pytest.raises(TimeoutError):
        async with clock:
            await asyncio.sleep(10.0)
    assert clock.fired and not clock.stalled


async def test_expect_head_restarts_the_head_clock_and_ignores_touches() -> None:
    clock = ExchangeClock(IDLE_S, 10.0)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with clock:
            clock.expect_progress()  # an upload...
            await asyncio.sleep(2 * IDLE_S)  # ...longer than the head clock: not cut
            t0 = loop.time()
            clock.expect_head()  # its last chunk is out: the head's wait begins
            for _ in range(STEPS * 10):  # bounded; the clock fires long before
                clock.touch()
                await asyncio.sleep(PACE_S)
    assert not clock.stalled
    assert IDLE_S <= loop.time() - t0 < 1.0


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def run() -> None:
        async with ExchangeClock(10.0, 10.0):
            started.set()
            await asyncio.sleep(10.0)

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_calls_after_the_block_are_ignored() -> None:
    clock = ExchangeClock(IDLE_S, IDLE_S)
    async with clock:
        pass
    clock.expect_head()  # e.g. an upload's sender task winding down late
    clock.expect_progress()
    await asyncio.sleep(2 * IDLE_S)
    assert not clock.fired
