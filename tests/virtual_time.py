"""An event loop on a clock the test controls: time moves only when the loop would otherwise wait.

A timer due in 25 ms fires at once, with `loop.time()` exactly 25 ms later; the work between timers takes no
time at all. So tests of pacing assert exact timings, and a loaded machine cannot skew them. For code that
awaits only timers and futures: a thread or a socket that never answers makes `run` fail, not wait.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _AdvancingSelector(selectors.SelectSelector):
    """Never blocks: a wait of `timeout` seconds moves the loop's clock on by that much instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("the loop would wait forever: no timer is due and nothing else can wake it")
        assert self.loop is not None
        self.loop.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0  # loop seconds
        selector = _AdvancingSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on a fresh `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)
