"""Serving the Gemini emulator on a loopback socket in the running loop: ``async with GeminiEmulator() as emu``."""

from __future__ import annotations

import asyncio
from typing import Any

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.gemini import lifecycle
from batcher.emulator.gemini.app import GeminiApp
from batcher.emulator.gemini.config import GeminiConfig
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.stats import GeminiStats
from batcher.emulator.serving import LoopbackServer


class GeminiEmulator(LoopbackServer):
    """The Gemini API emulator as an aiohttp server; point a client's base URL at `origin`."""

    def __init__(self, config: GeminiConfig | None = None, **knobs: Any) -> None:
        base = config or GeminiConfig()
        self._initial = base.replace(**knobs) if knobs else base
        super().__init__(self._initial.host, self._initial.port)
        self._state: GeminiState | None = None
        self._clock: EmulatorClock | None = None

    async def start(self) -> None:
        """Bind the socket and start serving."""
        self._clock = EmulatorClock(asyncio.get_running_loop())
        self._state = GeminiState(self._initial, self._clock.now())
        await self._serve(GeminiApp(self._state, self._clock).build())

    @property
    def state(self) -> GeminiState:
        if self._state is None:
            raise RuntimeError("the emulator has not been started")
        return self._state

    @property
    def clock(self) -> EmulatorClock:
        if self._clock is None:
            raise RuntimeError("the emulator has not been started")
        return self._clock

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def config(self) -> GeminiConfig:
        return self._state.config if self._state is not None else self._initial

    @property
    def stats(self) -> GeminiStats:
        """The live counters, with every batch that has ended by now settled (and billed)."""
        return lifecycle.settle(self.state, self.clock.now())

    def configure(self, **knobs: Any) -> GeminiConfig:
        """Change knobs at run time (not host or port); returns the new config."""
        return self.state.configure(self.clock.now(), **knobs)

    def lose_results(self, batch_name: str, status: int = 403) -> None:
        """Make this batch's responses file gone (files.get and the download answer `status`, 403 or 404): at
        once if the batch has ended, else as soon as it ends. Its lines are billed all the same."""
        lifecycle.lose_results(self.state, batch_name, status, self.clock.now())

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward: generations waiting on it finish, quota days and batches move on."""
        self.clock.advance(seconds)

    def reset(self) -> None:
        """Forget all counters, quotas and batches and re-seed."""
        self.state.reset(self.clock.now())
