"""The emulator's mutable state and the decisions made on it, with the clock passed in (no HTTP here)."""

from __future__ import annotations

import secrets

from batcher.emulator.config import EmulatorConfig
from batcher.emulator.images import ImageCache
from batcher.emulator.knobs import SeededState
from batcher.emulator.stats import Stats
from batcher.emulator.tasks import NEVER, Outcome, Task, TaskBook
from batcher.emulator.validate import CreateRequest

CANCEL_REASON = "cancelled by the service"
FILE_TOKEN_BYTES = 6


class EmulatorState(SeededState[EmulatorConfig]):
    """Config, tasks, counters, rate limiter and the one seeded random source every draw comes from."""

    def __init__(self, config: EmulatorConfig, now: float) -> None:
        self.config = config
        self.images = ImageCache()
        self.in_flight = 0  # requests being handled right now
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget tasks and counters, refill the bucket and re-seed, so a run after reset reproduces."""
        self._reseed(now)
        self.book = TaskBook()
        self.stats = Stats(max_events=self.config.max_events)
        # Ids are identifiers, not behaviour: a fresh prefix keeps ids of a previous run from matching.
        self._prefix = secrets.token_hex(4)
        self._ids = 0

    def _configured(self) -> None:
        self.stats.max_events = self.config.max_events

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
