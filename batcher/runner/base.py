"""What every part of the runner shares: its state, the figures it reports, and the small rules they all use."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from batcher.config import RunConfig
from batcher.errors import BatcherError
from batcher.outputs import Finisher
from batcher.polling import FirstPollTracker
from batcher.providers.base import Provider
from batcher.storage import is_remote
from batcher.store import Job, Store, Stray, Task

log = logging.getLogger("batcher")
T = TypeVar("T")

PREFETCH_MIN = 8  # tasks claimed ahead of their create, at least
PREFETCH_S = 1.0  # and about this many seconds of the request rate
CLAIM_BATCH = 16  # free slots worth a claim transaction while other tasks are in flight


class StopReason:
    DONE = "done"
    BUDGET = "budget"
    INTERRUPTED = "interrupted"
    FATAL = "fatal"
    SUBMITTED = "submitted"  # batch `--no-wait`: every shard created; the batches run on at the API
    DEADLINE = "deadline"  # batch `--finish-online-after`: shards not done were cancelled, their tasks pending


@dataclass
class Progress:
    """Counters for the progress display (read by the CLI, written only by the runner)."""

    total: int = 0
    done_before: int = 0  # finished before this run started
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    requests: int = 0
    spent_micros: int = 0
    started: float = field(default_factory=time.monotonic)
    claims: int = 0  # claim transactions, the tasks they took, and the seconds they took
    claimed: int = 0
    claim_s: float = 0.0
    cached: int = 0  # of `succeeded`: satisfied from the cache, no API call
    detail: str = ""  # what else the display shows (the batch route: its shards and their states)


@dataclass
class RunResult:
    reason: str
    error: BatcherError | None = None
    left: int = 0  # tasks not final when the run stopped
    progress: Progress | None = None  # this worker's own share of the work
    elsewhere: dict[str, int] = field(default_factory=dict)  # open tasks another provider holds, by provider

    def worker_figures(self) -> dict[str, Any]:
        p = self.progress
        if p is None:
            return {}
        return {
            "succeeded": p.succeeded, "failed": p.failed, "requests": p.requests, "claims": p.claims,
            "claimed": p.claimed, "claim_ms_per_task": round(1000 * p.claim_s / p.claimed, 3) if p.claimed else None,
        }  # fmt: skip


class RunnerBase:
    """The state of one run of one job through one provider."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        job: Job,
        config: RunConfig,
        prices: dict[str, int],
        *,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.provider, self.job, self.config = store, provider, job, config
        self.prices = prices  # micro-dollars per successful call, by model
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        store.worker_id = self.worker_id
        self.rng = rng or random.Random()
        self.clock = clock  # this host's wall clock; leases are judged by the store's (`_now`)
        self.progress = Progress()
        self.first_polls: dict[str, FirstPollTracker] = {}  # per model; warm from the store's memory
        self.remote = is_remote(job.output_dir)  # a bucket: images go through batcher.storage, not the disk
        self.output_root = job.output_dir if self.remote else str(Path(job.output_dir).resolve())
        self.output_dir = Path(self.output_root)
        self._active: dict[int, asyncio.Task[None]] = {}
        self._polling: set[int] = set()  # tasks past their create: safe to cancel on a stop
        self._strays: dict[int, asyncio.Task[None]] = {}  # stray replies this worker polls, by stray id
        self._wake = asyncio.Event()
        self._stopping = False
        self._budget_blocked = False
        self._quota_probe = False  # a task a per-day quota stopped is tried first: its answer frees the rest
        self._probe_busy = False  # while probing: a create claimed and not answered yet (one at a time)
        self._draining = False  # nothing left to create: the last images are collected sooner
        self._last_takeover = 0.0
        self._next_look = 0.0  # when a claim that found nothing more to take is worth its transaction again
        self._to_create: set[int] = set()  # claimed, create not sent yet
        self._twins: set[str] = set()  # keys of this job's open tasks that some finished task shares
        self._fatal: BatcherError | None = None
        self._inline: dict[int, tuple[str, ...]] = {}  # input images as the next create sends them
        self._finisher = Finisher()

    def _now(self) -> float:
        """The store's clock: every lease is judged by it, whatever the skew between the workers' hosts."""
        return self.clock() + self.store.clock_offset

    def _fail_run(self, error: BatcherError) -> None:
        if self._fatal is None:
            self._fatal = error
            log.info("stopping: %s", error.message)  # said once, by whoever ends the run (the CLI's last line)
        self._wake.set()

    def _unit(self, task: Task) -> int:
        """What one create of the task is reserved at: the configured unit price."""
        return self.prices[task.model]

    def _cost(self, task: Task) -> int:
        return task.price_reported_micros if task.price_reported_micros is not None else self.prices[task.model]

    def _prefetch(self) -> int:
        """Tasks to hold claimed ahead of their create: about a second of the request rate."""
        return max(PREFETCH_MIN, min(int(self.provider.gate.rate * PREFETCH_S), self.config.max_in_flight))

    def _worth_a_claim(self) -> bool:
        """Claim in batches: one transaction per finished task would cost more than the task's own writes."""
        return self.config.max_in_flight - len(self._active) >= min(CLAIM_BATCH, self.config.max_in_flight)

    def _create_sent(self, task: Task) -> None:
        self._to_create.discard(task.id)
        if len(self._to_create) < self._prefetch() // 2:
            self._wake.set()  # time to claim the next few

    def _poll_stray(self, stray: Stray) -> None:
        """Drive a stray reply to its end (the lifecycle part)."""
        raise NotImplementedError


async def to_the_end(step: Coroutine[Any, Any, T]) -> T:
    """Run `step` to its end even when the caller is cancelled meanwhile (a stop), then pass the cancellation
    on. For a file's rename into place and the commit that records it: a stop between the two left an image
    under a task's name that the store did not know, which a resume then fetched again or failed beside."""
    inner = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.cancelled():  # the loop itself is closing: nothing is left to wait for
                raise
            cancelled = True  # a stop, or the stop's second word (`_wind_down`): the step goes on all the same
    if cancelled:
        raise asyncio.CancelledError
    return result
