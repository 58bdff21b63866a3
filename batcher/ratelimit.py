"""The account-wide request rate, shared by every create and poll of this process.

aiolimiter's bucket starts empty, so `AsyncLimiter(rate, 1)` lets `rate` requests out at once; a capacity of one
(`AsyncLimiter(1, 1 / rate)`) spaces them evenly instead (NOTES.md). aiolimiter knows nothing of 429s, so the
gate adds a pool-wide pause: a 429's `Retry-After` is the earliest time any request may go out again.
Polls go before creates when both wait: finishing work frees capacity, starting work only adds to it.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

DEFAULT_429_PAUSE_S = 1.0  # when a 429 carries no Retry-After, seconds
MAX_429_PAUSE_S = 60.0  # consecutive 429s without Retry-After back off up to this, seconds


class RateGate:
    """`await acquire()` before each API request; report 429s with `rate_limited()`."""

    __slots__ = (
        "_limiter",
        "_paused_until",
        "_polls_done",
        "_polls_waiting",
        "_strikes",
        "rate",
        "rate_limited_count",
    )  # fmt: skip

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._limiter = AsyncLimiter(1, 1.0 / rate) if rate else None
        self._paused_until = 0.0  # loop time
        self._polls_waiting = 0
        self._polls_done = asyncio.Event()
        self._polls_done.set()
        self._strikes = 0  # 429s in a row
        self.rate_limited_count = 0

    async def acquire(self, *, priority: bool) -> None:
        loop = asyncio.get_running_loop()
        if priority:
            self._polls_waiting += 1
            self._polls_done.clear()
        try:
            while True:
                if not priority:
                    await self._polls_done.wait()
                wait = self._paused_until - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if self._limiter is not None:
                    await self._limiter.acquire()
                if self._paused_until <= loop.time():
                    return
                # a 429 came in while we waited for our turn: honour its pause too
        finally:
            if priority:
                self._polls_waiting -= 1
                if self._polls_waiting == 0:
                    self._polls_done.set()

    def rate_limited(self, retry_after_s: float | None) -> None:
        """A 429: hold every request of the pool until Retry-After (or a growing default) has passed."""
        self.rate_limited_count += 1
        self._strikes += 1
        if retry_after_s is None:
            retry_after_s = min(MAX_429_PAUSE_S, DEFAULT_429_PAUSE_S * 2 ** min(self._strikes - 1, 10))
        until = asyncio.get_running_loop().time() + retry_after_s
        self._paused_until = max(self._paused_until, until)

    def answered(self) -> None:
        """Any reply that was not a 429."""
        self._strikes = 0
