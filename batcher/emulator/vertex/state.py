"""The Vertex emulator's mutable state: config, counters, tokens, objects, jobs and the seeded random source."""

from __future__ import annotations

import secrets
import time

from batcher.emulator.gemini.images import GeminiImages
from batcher.emulator.knobs import SeededState
from batcher.emulator.vertex.config import VertexConfig
from batcher.emulator.vertex.jobs import Job
from batcher.emulator.vertex.stats import VertexStats
from batcher.emulator.vertex.storage import ObjectStore
from batcher.emulator.vertex.tokens import TokenIssuer

Refusal = tuple[str, bool]  # (reason, blocked: no candidate at all)
JOB_ID_DIGITS = 19  # Vertex job ids are long decimal numbers


class VertexState(SeededState[VertexConfig]):
    """Everything a request may read or change. Registered keys survive a reset; issued tokens do not."""

    def __init__(self, config: VertexConfig, now: float) -> None:
        self.config = config
        self.images = GeminiImages()
        self.tokens = TokenIssuer()
        self.in_flight = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget counters, tokens, objects, jobs and refusals, and re-seed."""
        self._reseed(now)
        self.stats = VertexStats()
        self.tokens.forget_tokens()
        self.store = ObjectStore()
        self.jobs: dict[str, Job] = {}  # by id, in creation order
        self._refused: dict[str, Refusal] = {}
        # A fresh leading part keeps ids of a previous run from matching.
        self._prefix = str(secrets.randbelow(9 * 10**12) + 10**12)
        self._ids = 0
        self.wall_offset_s = time.time() - now  # the emulator's clock plus this is its wall time

    def next_id(self) -> str:
        self._ids += 1
        return f"{self._prefix}{self._ids:0{JOB_ID_DIGITS - len(self._prefix)}d}"

    def wall(self, now: float) -> float:
        return now + self.wall_offset_s

    def refusal(self, prompt: str, refusal_rate: float, block_rate: float) -> Refusal | None:
        """Whether this prompt is refused; a refused prompt stays refused, as the real service does."""
        known = self._refused.get(prompt)
        if known is not None:
            return known
        found: Refusal | None = None
        if self.roll(block_rate):
            found = (self.config.block_reason, True)
        elif self.roll(refusal_rate):
            found = (self.config.refusal_reason, False)
        if found is not None:
            self._refused[prompt] = found
        return found
