"""The account-wide rate limit, driven past its limit over real HTTP."""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime

from batcher.emulator import Emulator

from .emu_helpers import Api, MakeApi

RATE = 40.0  # requests/s
BURST = 5.0  # tokens
DRIVE_S = 2.5  # seconds of overload
WORKERS = 12


def max_in_window(times: list[float], window_s: float) -> int:
    """The most events in any closed window of `window_s` seconds."""
    best, left = 0, 0
    for right, t in enumerate(times):
        while t - times[left] > window_s:
            left += 1
        best = max(best, right - left + 1)
    return best


async def hammer(api: Api, until: float, retry_afters: list[str]) -> None:
    loop = asyncio.get_running_loop()
    i = 0
    while loop.time() < until:
        i += 1
        reply = await api.create(prompt=f"p{i}") if i % 2 else await api.query("whatever")
        if reply.status == 429:
            assert reply.body["code"] == 429
            retry_afters.append(reply.headers["Retry-After"])


async def test_no_second_admits_more_than_rate_plus_burst(make_api: MakeApi) -> None:
    api = await make_api(rate_limit=RATE, burst=BURST)
    retry_afters: list[str] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(hammer(api, started + DRIVE_S, retry_afters) for _ in range(WORKERS)))
    elapsed = loop.time() - started

    stats = api.emu.stats
    admitted = stats.accepted_times()
    assert max_in_window(admitted, 1.0) <= RATE + BURST
    # That it also lets the whole allowed rate through is test_emulator_units.py's to show, on a clock it
    # controls: here a loaded machine may send fewer requests than the rate allows.
    assert len(admitted) > BURST and elapsed > 0
    assert stats.rate_limited > len(admitted)  # the load really was beyond the limit
    assert stats.rate_limited == stats.count("create", 429) + stats.count("query", 429)
    assert retry_afters and all(int(value) >= 1 for value in retry_afters)


async def test_retry_after_as_http_date(make_api: MakeApi) -> None:
    api = await make_api(rate_limit=0.5, burst=1, retry_after_format="http-date")
    assert (await api.query("x")).status == 404  # the one token
    reply = await api.query("x")
    assert reply.status == 429
    when = parsedate_to_datetime(reply.headers["Retry-After"]).timestamp()
    # 2 s until the next token: the date must not be earlier than that, nor much later.
    assert time.time() + 1.9 <= when <= time.time() + 4


async def test_429_under_http_200_keeps_code_and_header(make_api: MakeApi) -> None:
    api = await make_api(rate_limit=1, burst=1, errors_http_200=True)
    await api.query("x")
    reply = await api.query("x")
    assert reply.status == 200 and reply.body["code"] == 429 and int(reply.headers["Retry-After"]) >= 1


async def test_downloads_are_not_rate_limited(make_api: MakeApi) -> None:
    api = await make_api(rate_limit=1, burst=2)
    url = (await api.generate())["file_url"]  # spends both tokens
    for _ in range(5):
        assert (await api.download(url))[0] == 200


async def test_changing_the_limit_at_run_time_refills_the_bucket(make_api: MakeApi) -> None:
    api = await make_api(rate_limit=1, burst=1)
    emu: Emulator = api.emu
    await api.query("x")
    assert (await api.query("x")).status == 429
    emu.configure(rate_limit=None)
    assert all([(await api.query("x")).status == 404 for _ in range(20)])
