"""The account-wide request rate: every create and poll of this process passes one gate.

Why not aiolimiter here: its bucket has neither priorities nor a rate that can change while tasks wait, and
both are needed. The gate paces requests evenly at the current rate (capacity one: no bursts, so a configured
limit meets no 429), lets polls go before creates (finished work is collected first) without starving creates,
and holds the whole pool after a 429 until its `Retry-After` has passed.

Above `1 / TICK_S` requests per second the slots are closer together than a timer is worth: each wake-up of
the loop costs more CPU than the request's own bookkeeping. There the gate wakes once a tick and lets out the
requests whose slots fall within it, so the rate over any window of a tick or more is still the rate.

The rate itself comes from `AdaptiveRate`, a pure controller: with a configured limit it keeps to it; with none
(or one that proves too high) it finds the account's limit from 429s and holds just under it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Protocol

DEFAULT_429_PAUSE_S = 1.0  # when a 429 carries no Retry-After, seconds
MAX_429_PAUSE_S = 60.0  # consecutive 429s without Retry-After back off up to this, seconds
POLLS_PER_CREATE = 3  # while creates wait, at most this many polls go first in a row
TICK_S = 0.01  # above 1 / TICK_S requests per second, the gate lets requests out once a tick, seconds


@dataclass
class AdaptiveRate:
    """Requests per second to send, from what the API answered. Pure: time is passed in (loop seconds).

    Phases: `fixed` (a configured limit, no 429 seen), `probe` (no limit known: grow by half every second,
    like TCP's slow start), `hold` (a limit was found: stay just under it, creeping up slowly in case the
    account's limit grew). A 429 at most once a second cuts the rate to just under what the API accepted.
    """

    rate: float
    ceiling: float | None = None  # a configured limit: never exceed it
    phase: str = "probe"
    probe_growth: float = 1.5  # per second while probing
    hold_factor: float = 0.95  # of the accepted rate, after a 429
    creep: float = 1.02  # growth per creep interval while holding
    creep_every_s: float = 15.0
    min_rate: float = 0.5
    _last_change: float | None = None
    _last_cut: float = -1e9
    _resumed: float = -1e9  # when the last 429's pause ended
    _accepted: collections.deque[float] | None = None

    @classmethod
    def start(cls, configured: float | None, learned: float | None, initial: float = 20.0) -> AdaptiveRate:
        if configured is not None:
            return cls(rate=configured, ceiling=configured, phase="fixed")
        if learned is not None:
            return cls(rate=learned, phase="hold")
        return cls(rate=initial, phase="probe")

    def __post_init__(self) -> None:
        self._accepted = collections.deque()

    def accepted(self, now: float) -> None:
        """A request the API did not refuse with 429."""
        assert self._accepted is not None
        self._accepted.append(now)
        while self._accepted and self._accepted[0] < now - 2.0:
            self._accepted.popleft()

    def tick(self, now: float) -> None:
        """Let the rate grow with time while no 429 comes."""
        if self._last_change is None:
            self._last_change = now
            return
        elapsed = now - self._last_change
        if self.phase == "probe" and elapsed >= 1.0:
            self._set(self.rate * self.probe_growth, now)
        elif self.phase == "hold" and elapsed >= self.creep_every_s:
            self._set(self.rate * self.creep, now)

    def rate_limited(self, now: float, resume_at: float) -> None:
        """A 429 (the pool pauses until `resume_at`): cut to just under the rate the API accepted lately."""
        assert self._accepted is not None
        if now - self._last_cut < 1.0:
            return  # one cut per second: the 429s of one overshoot arrive together
        self._last_cut = now
        # the API's admissions over the last second of sending (time spent paused does not count) are the
        # best sign of its limit; too thin a sample only cuts by a fixed factor
        since = max(now - 1.0, self._resumed)
        count = sum(1 for t in self._accepted if t >= since)
        span = now - since
        self._resumed = resume_at
        if count < 3 or span < 0.25:
            target = self.rate * 0.8
        else:
            target = min(self.rate * 0.9, count / span * self.hold_factor)
        self.phase = "hold"
        self._set(target, now)

    def _set(self, rate: float, now: float) -> None:
        rate = max(rate, self.min_rate)
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        self.rate = rate
        self._last_change = now

    @property
    def found_limit(self) -> float | None:
        """The limit learned from 429s, worth remembering for the next run."""
        return self.rate if self.phase == "hold" else None


class SharedRate(Protocol):
    """A token bucket every worker of an account draws from (held in the store, on PostgreSQL)."""

    async def take(self) -> float:
        """0 when a token was taken; else seconds until one will be there."""
        ...

    async def hold(self, seconds: float) -> None:
        """A 429: no worker may send for `seconds`, and the shared rate is cut."""
        ...


class RateGate:
    """`await acquire(priority=...)` before each API request; the client reports replies back."""

    def __init__(self, rate: AdaptiveRate | float | None, shared: SharedRate | None = None) -> None:
        if not isinstance(rate, AdaptiveRate):
            rate = AdaptiveRate.start(rate, None)
        self.control = rate
        self.shared = shared
        self._holding: asyncio.Task[None] | None = None
        self.rate_limited_count = 0
        self._paused_until = 0.0  # loop time
        self._next_slot = 0.0
        self._strikes = 0  # 429s in a row without Retry-After
        self._polls: collections.deque[asyncio.Future[None]] = collections.deque()
        self._creates: collections.deque[asyncio.Future[None]] = collections.deque()
        self._polls_in_a_row = 0
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def rate(self) -> float:
        return self.control.rate

    async def acquire(self, *, priority: bool) -> None:
        """Wait for this request's turn. `priority`: a poll (goes before creates)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        (self._polls if priority else self._creates).append(fut)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch(), name="batcher-rate-gate")
        self._wake.set()
        try:
            await fut
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                (self._polls if priority else self._creates).remove(fut)
            raise

    def rate_limited(self, retry_after_s: float | None) -> None:
        """A 429: hold every request of the pool until Retry-After (or a growing default) has passed."""
        now = asyncio.get_running_loop().time()
        self.rate_limited_count += 1
        self._strikes += 1
        if retry_after_s is None:
            retry_after_s = min(MAX_429_PAUSE_S, DEFAULT_429_PAUSE_S * 2 ** min(self._strikes - 1, 10))
        self._paused_until = max(self._paused_until, now + retry_after_s)
        self.control.rate_limited(now, self._paused_until)
        if self.shared is not None and (self._holding is None or self._holding.done()):
            self._holding = asyncio.get_running_loop().create_task(self.shared.hold(retry_after_s))

    def answered(self) -> None:
        """Any reply that was not a 429."""
        self._strikes = 0
        self.control.accepted(asyncio.get_running_loop().time())

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher

    def _next(self) -> asyncio.Future[None] | None:
        """Polls first; but after POLLS_PER_CREATE polls in a row, a waiting create gets its turn."""
        polls = self._polls
        creates = self._creates
        while polls and polls[0].done():
            polls.popleft()
        while creates and creates[0].done():
            creates.popleft()
        if polls and (not creates or self._polls_in_a_row < POLLS_PER_CREATE):
            self._polls_in_a_row += 1
            return polls.popleft()
        if creates:
            self._polls_in_a_row = 0
            return creates.popleft()
        return None

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._polls and not self._creates:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = loop.time()
            self.control.tick(now)
            start = max(self._next_slot, self._paused_until)
            # a slot less than a tick ahead goes now, when slots are closer than a tick (see the module's doc)
            early = TICK_S if self._paused_until <= now and self.control.rate * TICK_S > 1.0 else 0.0
            if start > now + early:
                await asyncio.sleep(start - now)
                continue  # the pause or the rate may have changed while sleeping
            if self.shared is not None:
                wait = await self.shared.take()
                if wait > 0:
                    await asyncio.sleep(min(wait, 1.0))
                    continue
            fut = self._next()
            if fut is None:
                continue
            fut.set_result(None)
            self._next_slot = max(now, self._next_slot) + 1.0 / self.control.rate
