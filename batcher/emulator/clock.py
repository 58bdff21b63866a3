"""The emulators' clock: the serving loop's time plus what `advance` added, with waits it can cut short."""

from __future__ import annotations

import asyncio


class EmulatorClock:
    """Loop time moved forward by `advance`; `sleep_until` wakes on the deadline or on an advance past it."""

    __slots__ = ("_ahead_s", "_loop", "_moved")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ahead_s = 0.0
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self._loop.time() + self._ahead_s

    def advance(self, seconds: float) -> None:
        """Move the clock forward; sleepers whose deadline is now past wake at once."""
        if not seconds >= 0:
            raise ValueError("the clock only moves forward")
        self._ahead_s += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def sleep_until(self, deadline: float) -> None:
        """Wait until the clock reads `deadline`, by the loop's timers or by advances."""
        while (left := deadline - self.now()) > 0:
            moved = self._moved
            try:
                await asyncio.wait_for(moved.wait(), left)
            except TimeoutError:
                pass
