"""The emulators' clock: the serving loop's time plus what `advance` added, with waits it can cut short."""

from __future__ import annotations

import asyncio


class EmulatorClock:
    """Loop time moved forward by `advance`; `sleep_until` wakes on the deadline or on an advance past it."""

    __slots__ = ("_ahead_s", "_loop", "_moved", "sleepers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ahead_s = 0.0
        self._moved = asyncio.Event()
        # how many waits are under way: a test advances the clock once the replies it holds are waiting, not
        # after a real sleep that a slow machine may outlast
        self.sleepers = 0

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
        self.sleepers += 1
        try:
            while (left := deadline - self.now()) > 0:
                moved = self._moved
                try:
                    await asyncio.wait_for(moved.wait(), left)
                except TimeoutError:
                    pass
        finally:
            self.sleepers -= 1
