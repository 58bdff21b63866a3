"""Generation tasks and their lifecycle.

A task's fate and finish time are drawn when it is created; its status is then a pure function of the clock,
so nothing runs per task in the background.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal

from batcher.emulator.config import HostileKind
from batcher.emulator.stats import Stats
from batcher.emulator.validate import CreateRequest

Outcome = Literal["Success", "Failed", "Cancelled"]
NEVER = math.inf  # expiry of a URL that does not expire


@dataclass(slots=True)
class Task:
    """One accepted generation."""

    task_id: str
    order_id: str
    request: CreateRequest
    created_at: float  # loop clock, seconds
    ready_at: float  # loop clock at which the outcome becomes visible
    outcome: Outcome
    reason: str = ""  # why it failed or was cancelled
    stable_token: str | None = None  # the one file token handed out when URLs never expire
    url_expiry: dict[str, float] = field(default_factory=dict)  # file token -> loop time it expires
    hostile: HostileKind | None = None  # the file URL this task's Success names attacks the client
    forget: bool = False  # forgotten once its Success has been reported (forget_rate)
    reported: bool = False  # a query has answered Success

    def forgotten(self, now: float, ttl_s: float | None) -> bool:
        """Whether the API no longer knows this task at `now` (queries and its file answer 404)."""
        return (self.forget and self.reported) or (ttl_s is not None and now >= self.ready_at + ttl_s)

    def status(self, now: float, field_variant: bool) -> str:
        """The status a query sees at `now`. The field variant spends the first half of the wait Pending."""
        if now >= self.ready_at:
            return self.outcome
        if field_variant and now < (self.created_at + self.ready_at) / 2:
            return "Pending"
        return "Processing"


class TaskBook:
    """All tasks by id, plus a min-heap of unfinished ones ordered by (ready_at, sequence)."""

    __slots__ = ("_running", "_seq", "tasks")

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self._running: list[tuple[float, int, Task]] = []
        self._seq = 0

    def add(self, task: Task, now: float, stats: Stats) -> None:
        """Store a new task and update the peak of generations in progress."""
        self.tasks[task.task_id] = task
        self._seq += 1
        heapq.heappush(self._running, (task.ready_at, self._seq, task))
        self.settle(now, stats)
        # After settling, everything left in the heap is still generating.
        stats.peak_concurrent_generations = max(stats.peak_concurrent_generations, len(self._running))

    def settle(self, now: float, stats: Stats) -> None:
        """Count every generation that has finished by `now` (each exactly once)."""
        running = self._running
        while running and running[0][0] <= now:
            _, _, task = heapq.heappop(running)
            if task.outcome == "Success":
                stats.successes += 1
            elif task.outcome == "Failed":
                stats.failures += 1
            else:
                stats.cancels += 1

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def __len__(self) -> int:
        return len(self.tasks)
