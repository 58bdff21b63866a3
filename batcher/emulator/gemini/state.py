"""The Gemini emulator's mutable state and its decisions, with the clock passed in (no HTTP here)."""

from __future__ import annotations

import math
import random
import secrets
import time
from typing import Any

from batcher.emulator.gemini.batches import Batch
from batcher.emulator.gemini.config import STARTUP_ONLY, GeminiConfig
from batcher.emulator.gemini.files import FileStore
from batcher.emulator.gemini.images import GeminiImages
from batcher.emulator.gemini.stats import GeminiStats
from batcher.emulator.limiter import TokenBucket

Refusal = tuple[str, bool]  # (reason, blocked: no candidate at all)


class GeminiState:
    """Config, counters, quotas and the one seeded random source every draw comes from."""

    def __init__(self, config: GeminiConfig, now: float) -> None:
        self.config = config
        self.images = GeminiImages()
        self.in_flight = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget counters, quotas and refusals, and re-seed, so a run after reset reproduces."""
        self.rng = random.Random(self.config.seed)
        self.stats = GeminiStats()
        self._bucket = self._new_bucket(now)
        self._day_start = now
        self._day_count = 0
        self._refused: dict[str, Refusal] = {}
        self._prefix = secrets.token_hex(4)  # ids of a previous run never match
        self._ids = 0
        self.files = FileStore()
        self.batches: dict[str, Batch] = {}  # by name (batches/...), in creation order
        self.wall_offset_s = time.time() - now  # the emulator's clock plus this is its wall time

    def configure(self, now: float, **knobs: Any) -> GeminiConfig:
        """Change knobs at run time; raises ValueError for unknown, invalid or startup-only ones."""
        fixed = STARTUP_ONLY & set(knobs)
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot change while the server runs")
        old = self.config
        self.config = old.replace(**knobs)
        if (old.rate_limit, old.bucket_size) != (self.config.rate_limit, self.config.bucket_size):
            self._bucket = self._new_bucket(now)
        if old.seed != self.config.seed:
            self.rng = random.Random(self.config.seed)
        return self.config

    def _new_bucket(self, now: float) -> TokenBucket | None:
        if self.config.rate_limit is None:
            return None
        return TokenBucket(self.config.rate_limit, self.config.bucket_size, now)

    def roll(self, rate: float) -> bool:
        """True with probability `rate`; a zero rate draws nothing, so unused knobs leave sequences alone."""
        return rate > 0.0 and self.rng.random() < rate

    def next_id(self) -> str:
        self._ids += 1
        return f"{self._prefix}{self._ids:06d}"

    def admit(self, now: float) -> float:
        """The token bucket: 0.0 if admitted, else seconds until a token is due."""
        return 0.0 if self._bucket is None else self._bucket.take(now)

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
