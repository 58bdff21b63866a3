"""Serving the Gemini emulator on a loopback socket in the running loop: ``async with GeminiEmulator() as emu``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.gemini import lifecycle
from batcher.emulator.gemini.app import GeminiApp
from batcher.emulator.gemini.config import GeminiConfig
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.stats import GeminiStats
from batcher.emulator.serving import ClockedEmulator


class GeminiEmulator(ClockedEmulator[GeminiConfig, GeminiState]):
    """The Gemini API emulator as an aiohttp server; point a client's base URL at `origin`."""

    def __init__(self, config: GeminiConfig | None = None, **knobs: Any) -> None:
        base = config or GeminiConfig()
        super().__init__(base.replace(**knobs) if knobs else base)

    def _build(self, clock: EmulatorClock) -> tuple[GeminiState, web.Application]:
        state = GeminiState(self._initial, clock.now())
        return state, GeminiApp(state, clock).build()

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
