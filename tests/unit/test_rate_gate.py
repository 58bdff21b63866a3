"""The rate gate on an event loop whose clock the test controls (`tests.virtual_time`): even pacing, requests
let out per tick at high rates, polls first, a 429's hold. Timings are exact: no real sleep is measured."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from batcher.ratelimit import POLLS_PER_CREATE, TICK_S, RateGate
from tests import virtual_time

EPS = 1e-9  # float rounding of summed slots, seconds


async def release_times(gate: RateGate, n: int, *, priority: bool = False) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await gate.acquire(priority=priority)
        times.append(loop.time())

    try:
        await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await gate.close()
    return sorted(times)


def test_the_loop_clock_is_the_tests() -> None:
    async def slept() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(25.0)
        return loop.time() - start

    assert virtual_time.run(slept()) == 25.0


def test_a_rate_below_one_per_tick_is_paced_evenly() -> None:
    rate = 40.0  # 25 ms apart: more than a tick
    assert rate * TICK_S < 1
    times = virtual_time.run(release_times(RateGate(rate), 12))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1 / rate] * 11, abs=EPS)  # never two at once, never a slot skipped


def test_a_high_rate_lets_requests_out_once_a_tick_and_keeps_the_rate() -> None:
    rate = 1000.0  # ten slots per tick
    times = virtual_time.run(release_times(RateGate(rate), 300))
    # the rate over the whole run, and over every window of a tick, is the rate (one tick's worth early at most)
    assert times[-1] - times[0] >= (300 - rate * TICK_S - 1) / rate
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u - t < TICK_S)
        assert in_window <= rate * TICK_S + 1
    # and the gate woke about once a tick, not once a request
    wakeups = len(set(times))
    assert wakeups <= 300 / (rate * TICK_S) + 1


def test_polls_go_first_but_never_more_than_three_in_a_row_while_a_create_waits() -> None:
    async def order_of_release() -> list[str]:
        gate = RateGate(200.0)
        order: list[str] = []

        async def one(kind: str) -> None:
            await gate.acquire(priority=kind == "poll")
            order.append(kind)

        try:
            await asyncio.gather(*(one("create") for _ in range(3)), *(one("poll") for _ in range(9)))
        finally:
            await gate.close()
        return order

    order = virtual_time.run(order_of_release())
    assert order[: POLLS_PER_CREATE + 1] == ["poll"] * POLLS_PER_CREATE + ["create"]
    assert order.count("create") == 3
    run = 0
    for kind in order:
        run = run + 1 if kind == "poll" else 0
        assert run <= POLLS_PER_CREATE


def test_a_429_holds_every_request_until_retry_after() -> None:
    async def held_for() -> float:
        gate = RateGate(1000.0)
        loop = asyncio.get_running_loop()
        await gate.acquire(priority=False)
        gate.rate_limited(0.3)
        held_from = loop.time()
        times = await release_times(gate, 5, priority=True)
        return times[0] - held_from

    assert virtual_time.run(held_for()) == pytest.approx(0.3, abs=EPS)
