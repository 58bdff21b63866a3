"""The Gemini emulator's mutable state and its decisions, with the clock passed in (no HTTP here)."""

from __future__ import annotations

import math
import secrets
import time

from batcher.emulator.gemini.batches import Batch
from batcher.emulator.gemini.config import GeminiConfig
from batcher.emulator.gemini.files import FileStore
from batcher.emulator.gemini.images import GeminiImages
from batcher.emulator.gemini.stats import GeminiStats
from batcher.emulator.knobs import SeededState

Refusal = tuple[str, bool]  # (reason, blocked: no candidate at all)


class GeminiState(SeededState[GeminiConfig]):
    """Config, counters, quotas and the one seeded random source every draw comes from."""

    def __init__(self, config: GeminiConfig, now: float) -> None:
        self.config = config
        self.images = GeminiImages()
        self.in_flight = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget counters, quotas and refusals, and re-seed, so a run after reset reproduces."""
        self._reseed(now)
        self.stats = GeminiStats()
        self._day_start = now
        self._day_count = 0
        self._refused: dict[str, Refusal] = {}
        self._prefix = secrets.token_hex(4)  # ids of a previous run never match
        self._ids = 0
        self.files = FileStore()
        self.batches: dict[str, Batch] = {}  # by name (batches/...), in creation order
        self.wall_offset_s = time.time() - now  # the emulator's clock plus this is its wall time

    def next_id(self) -> str:
        self._ids += 1
        return f"{self._prefix}{self._ids:06d}"

    def take_daily(self, now: float) -> float:
        """Count one request against the day's quota: 0.0 if admitted, else seconds until the day resets."""
        config = self.config
        days = math.floor((now - self._day_start) / config.day_s)
        if days > 0:  # a new quota day
            self._day_start += days * config.day_s
            self._day_count = 0
        if config.daily_limit is not None and self._day_count >= config.daily_limit:
            return self._day_start + config.day_s - now
        self._day_count += 1
        return 0.0

    def refusal(self, prompt: str, refusal_rate: float, block_rate: float) -> Refusal | None:
        """Whether this prompt is refused; with sticky_refusals a refused prompt stays refused."""
        config = self.config
        known = self._refused.get(prompt) if config.sticky_refusals else None
        if known is not None:
            return known
        found: Refusal | None = None
        if self.roll(block_rate):
            found = (config.block_reason, True)
        elif self.roll(refusal_rate):
            found = (config.refusal_reason, False)
        if found is not None and config.sticky_refusals:
            self._refused[prompt] = found
        return found

    def file_exists(self, name: str) -> bool:
        """Whether the Files API holds `name` (files/...); Batch Mode fills the store."""
        return name in self.files
