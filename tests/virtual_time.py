"""An event loop on a clock the test controls: time moves only when the loop would otherwise wait.

A timer due in 25 ms fires at once, with `loop.time()` exactly 25 ms later; the work between timers takes no
time at all. So tests of pacing assert exact timings, and a loaded machine cannot skew them. For code that
awaits only timers and futures: a thread or a socket that never answers makes `run` fail, not wait. Code that
also waits on threads (a SQLite store) runs with `run_threaded`: the clock stands still while a thread works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

import aiosqlite.core

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


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


# --- with threads: a store through aiosqlite, files finished in `asyncio.to_thread` --------------------------

THREAD_PATIENCE_S = 30.0  # real seconds a thread may take to answer before the test fails instead of waiting


class _ThreadAwareSelector(_AdvancingSelector):
    """Like `_AdvancingSelector`, but while a thread owes the loop an answer the clock stands still and the
    selector really blocks, until the thread's `call_soon_threadsafe` wakes it through the loop's self-pipe."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert isinstance(loop, ThreadAwareVirtualTimeLoop)
        if not loop.owed:
            return super().select(timeout)
        ready = selectors.SelectSelector.select(self, 0 if timeout == 0 else THREAD_PATIENCE_S)
        if not ready and timeout != 0:
            raise RuntimeError(f"a thread owed the loop an answer for {THREAD_PATIENCE_S:.0f} s: {loop.owed} open")
        return ready


class ThreadAwareVirtualTimeLoop(VirtualTimeLoop):
    """Virtual time for code that also waits on threads (SQLite through aiosqlite, `asyncio.to_thread`).

    Work handed to a thread takes no virtual time, like any other work: the clock moves on only when no thread
    owes the loop an answer and nothing is ready. Which work is owed is counted where it is handed over:
    `run_in_executor` (so `asyncio.to_thread`) and aiosqlite's queue to its connection thread (`run_threaded`
    puts a counting queue in its place while it runs). Work handed to a thread any other way is not seen: the
    clock could then jump while it runs, so such code needs a hook here first."""

    def __init__(self) -> None:
        self.now = 0.0
        self.owed = 0  # futures a thread will resolve
        selector = _ThreadAwareSelector()
        asyncio.SelectorEventLoop.__init__(self, selector)  # VirtualTimeLoop's own selector cannot see threads
        selector.loop = self

    def expect(self, fut: asyncio.Future[Any]) -> None:
        """`fut` will be resolved by a thread: time stands still until it is."""
        self.owed += 1

        def answered(_: asyncio.Future[Any]) -> None:
            self.owed -= 1

        fut.add_done_callback(answered)

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self.expect(fut)
        return fut

    async def shutdown_default_executor(self, *args: Any) -> None:
        self.owed += 1  # its thread answers through `call_soon_threadsafe` once the executor's threads are joined
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self.owed -= 1


class _CountingQueue(queue.SimpleQueue[Any]):
    """aiosqlite's queue of work for a connection's thread, each item `(future or None, function)`."""

    def put_nowait(self, item: Any) -> None:
        fut = item[0]
        if fut is not None and isinstance(loop := fut.get_loop(), ThreadAwareVirtualTimeLoop):
            loop.expect(fut)
        super().put_nowait(item)


def run_threaded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on a fresh `ThreadAwareVirtualTimeLoop` (see there for what time does)."""
    names = vars(aiosqlite.core)  # connections made while this runs take the counting queue
    assert names["SimpleQueue"] is queue.SimpleQueue, "aiosqlite no longer hands its work over as this expects"
    names["SimpleQueue"] = _CountingQueue
    try:
        with asyncio.Runner(loop_factory=ThreadAwareVirtualTimeLoop) as runner:
            return runner.run(coro)
    finally:
        names["SimpleQueue"] = queue.SimpleQueue
