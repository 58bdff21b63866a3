"""`batcher.run` and friends run their coroutine on a thread of their own; Ctrl-C stops it gracefully first.

A Ctrl-C while the caller waits must not return before the coroutine's graceful stop has ended (the replies of
creates on the wire are recorded then). On Python 3.11 a KeyboardInterrupt raised inside Thread.join marked the
thread stopped while it still ran, so the wait after the cancel returned at once and the process left mid-stop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from batcher.api import _blocking

WAIT_S = 30.0  # a bound on waits for the other threads (never reached when the code is right), seconds


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C as an interactive Python has it (a test runner's process may have it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_returns_only_after_the_graceful_stop_has_ended(ctrl_c_raises: None) -> None:
    running, cancelled, release = threading.Event(), threading.Event(), threading.Event()
    steps: list[str] = []

    async def work() -> None:
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            # the graceful stop: a reply still on the wire, recorded once it comes
            await asyncio.to_thread(release.wait, WAIT_S)
            steps.append("reply recorded")
            raise

    def press_ctrl_c_then_answer() -> None:
        assert running.wait(WAIT_S)
        wait_until_the_caller_waits()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        assert cancelled.wait(WAIT_S)
        steps.append("reply sent")
        release.set()

    helper = threading.Thread(target=press_ctrl_c_then_answer, daemon=True)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        _blocking(work)
    steps.append("call returned")
    helper.join(WAIT_S)
    assert steps == ["reply sent", "reply recorded", "call returned"]


def wait_until_the_caller_waits() -> None:
    """Until the main thread, in `_blocking`, has left Thread.start (a Ctrl-C there comes before the run is
    under way) and waits for the run's end: a bounded wait, by the stack the main thread is in."""
    main = threading.main_thread().ident
    for _ in range(int(WAIT_S / 0.001)):
        frame, names = sys._current_frames().get(main or 0), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        if "_blocking" in names and "start" not in names:
            return
        time.sleep(0.001)
    raise AssertionError("the caller never waited for the run")


def test_the_result_comes_back_when_nothing_interrupts() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 42

    assert _blocking(work) == 42
