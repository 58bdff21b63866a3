"""The emulator's mutable state and the decisions made on it, with the clock passed in (no HTTP here)."""

from __future__ import annotations

import random
import secrets
from typing import Any

from batcher.emulator.config import STARTUP_ONLY, EmulatorConfig
from batcher.emulator.images import ImageCache
from batcher.emulator.limiter import TokenBucket
from batcher.emulator.stats import Stats
from batcher.emulator.tasks import NEVER, Outcome, Task, TaskBook
from batcher.emulator.validate import CreateRequest

CANCEL_REASON = "cancelled by the service"
FILE_TOKEN_BYTES = 6


class EmulatorState:
    """Config, tasks, counters, rate limiter and the one seeded random source every draw comes from."""

    __slots__ = ("_bucket", "_ids", "_prefix", "book", "config", "images", "in_flight", "rng", "stats")

    def __init__(self, config: EmulatorConfig, now: float) -> None:
        self.config = config
        self.images = ImageCache()
        self.in_flight = 0  # requests being handled right now
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget tasks and counters, refill the bucket and re-seed, so a run after reset reproduces."""
        self.rng = random.Random(self.config.seed)
        self.book = TaskBook()
        self.stats = Stats(max_events=self.config.max_events)
        self._bucket = self._new_bucket(now)
        # Ids are identifiers, not behaviour: a fresh prefix keeps ids of a previous run from matching.
        self._prefix = secrets.token_hex(4)
        self._ids = 0

    def configure(self, now: float, **knobs: Any) -> EmulatorConfig:
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
        self.stats.max_events = self.config.max_events
        return self.config

    def _new_bucket(self, now: float) -> TokenBucket | None:
        if self.config.rate_limit is None:
            return None
        return TokenBucket(self.config.rate_limit, self.config.bucket_size, now)

    def admit(self, now: float) -> float:
        """Rate-limit one API request: 0.0 if admitted, else seconds until a token is due."""
        return 0.0 if self._bucket is None else self._bucket.take(now)

    def roll(self, rate: float) -> bool:
        """True with probability `rate`. A zero rate draws nothing, so unused knobs leave sequences alone."""
        return rate > 0.0 and self.rng.random() < rate

    def next_id(self) -> str:
        self._ids += 1
        return f"{self._prefix}{self._ids:06d}"

    def create_task(self, request: CreateRequest, now: float) -> Task:
        """Accept a generation: draw its fate and latency, store it and bill it."""
        config = self.config
        outcome: Outcome = "Success"
        reason = ""
        if self.roll(config.fail_rate):
            outcome, reason = "Failed", config.fail_reason
        elif self.roll(config.cancel_rate):
            outcome, reason = "Cancelled", CANCEL_REASON
        latency = config.latency.sample(self.rng)
        task_id = self.next_id()
        task = Task(task_id, f"ord-{task_id}", request, now, now + latency, outcome, reason)
        stats = self.stats
        # Drawn after everything else, so a zero rate leaves every other draw of a seeded run unchanged.
        if outcome == "Success" and self.roll(config.hostile_file_rate):
            task.hostile = config.hostile_file_kind
            stats.hostile_files += 1
        if outcome == "Success" and self.roll(config.forget_rate):
            task.forget = True
        self.book.add(task, now, stats)
        stats.creates_accepted += 1
        stats.accepted_by_prompt[request.prompt] = stats.accepted_by_prompt.get(request.prompt, 0) + 1
        return task

    def file_token(self, task: Task, now: float) -> str:
        """A token for the task's file URL: one stable token, or a fresh expiring one per query."""
        ttl = self.config.url_ttl_s
        if ttl is None:
            if task.stable_token is None:
                task.stable_token = secrets.token_hex(FILE_TOKEN_BYTES)
                task.url_expiry[task.stable_token] = NEVER
            return task.stable_token
        token = secrets.token_hex(FILE_TOKEN_BYTES)
        task.url_expiry[token] = now + ttl
        return token

    def settled_stats(self, now: float) -> Stats:
        """The counters, with every generation finished by `now` counted."""
        self.book.settle(now, self.stats)
        return self.stats
