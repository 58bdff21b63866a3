"""Running the emulator: on a loopback socket in the current event loop, or in a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any

from aiohttp import web

from batcher.emulator.app import API_BASE, EmulatorApp
from batcher.emulator.clock import EmulatorClock
from batcher.emulator.config import EmulatorConfig
from batcher.emulator.serving import ClockedEmulator
from batcher.emulator.state import EmulatorState
from batcher.emulator.stats import Stats

THREAD_START_TIMEOUT_S = 10.0


class Emulator(ClockedEmulator[EmulatorConfig, EmulatorState]):
    """The emulator as an aiohttp server in the running loop: ``async with Emulator(cfg) as emu``."""

    def __init__(self, config: EmulatorConfig | None = None, **knobs: Any) -> None:
        base = config or EmulatorConfig()
        super().__init__(base.replace(**knobs) if knobs else base)
        self._app: EmulatorApp | None = None

    def _build(self, clock: EmulatorClock) -> tuple[EmulatorState, web.Application]:
        state = EmulatorState(self._initial, clock.now())
        self._app = EmulatorApp(state, clock)
        return state, self._app.build()

    async def start(self) -> None:
        """Bind the socket and start serving."""
        await super().start()
        if self._app is not None and self._initial.host not in ("0.0.0.0", "::", ""):
            # File URLs name the address we listen on; a wildcard bind uses each request's Host instead.
            self._app.origin = self.origin

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock `seconds` forward: generations finish, URLs expire and tasks are forgotten
        as if that much time had passed (a test's clock, no sleeping)."""
        self.clock.advance(seconds)

    @property
    def base_url(self) -> str:
        """The API base, e.g. ``http://127.0.0.1:PORT/api/v1``."""
        return self.origin + API_BASE

    @property
    def stats(self) -> Stats:
        """The live counters, with generations finished by now counted."""
        return self.state.settled_stats(self.clock.now())

    def configure(self, **knobs: Any) -> EmulatorConfig:
        """Change knobs at run time (not host or port); returns the new config."""
        return self.state.configure(self.clock.now(), **knobs)

    def reset(self) -> None:
        """Forget all tasks and counters and re-seed."""
        self.state.reset(self.clock.now())


class BackgroundEmulator:
    """The emulator in a daemon thread with its own event loop, for synchronous clients and benchmarks."""

    def __init__(self, config: EmulatorConfig | None = None, **knobs: Any) -> None:
        self.emulator = Emulator(config, **knobs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="batcher-emulator", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self.emulator.start())
            except BaseException as exc:  # handed to the starting thread
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self.emulator.close())
        finally:
            loop.close()

    def __enter__(self) -> BackgroundEmulator:
        self._thread.start()
        if not self._ready.wait(THREAD_START_TIMEOUT_S):
            raise RuntimeError("the emulator thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return fn(*args, **kwargs)

        if self._loop is None:
            raise RuntimeError("the emulator thread has not been started")
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    @property
    def api_key(self) -> str:
        return self.emulator.api_key

    def stats(self, include_events: bool = True) -> dict[str, Any]:
        """A snapshot of the counters, taken on the emulator's loop."""
        result: dict[str, Any] = self._call(lambda: self.emulator.stats.as_dict(include_events))
        return result

    def configure(self, **knobs: Any) -> EmulatorConfig:
        result: EmulatorConfig = self._call(self.emulator.configure, **knobs)
        return result

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock `seconds` forward (see `Emulator.advance`), on the emulator's loop."""
        self._call(self.emulator.advance, seconds)
