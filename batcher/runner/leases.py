"""Claiming and leases: which tasks this worker takes, the heartbeat that keeps them its own, and taking over
the tasks of workers that stopped. Leases are judged by the store's clock (`_now`)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from batcher.catalog import provider_facts
from batcher.errors import BatcherError
from batcher.models import TaskStatus
from batcher.polling import FirstPollTracker
from batcher.runner.base import RunnerBase, log
from batcher.store import Task

RATE_LIMIT_KEY = "rate_limit"  # learned: the account's requests per second, found from 429s
FIRST_POLL_PREFIX = "first_poll_s:"  # learned, per model: when most generations are done
MIN_OBSERVATIONS = 20  # first polls seen before the estimate is worth keeping
LOOK_AGAIN_S = 1.0  # a claim that came back short is tried again after this long (retries come due, others let go)


def rate_limit_key(provider: str) -> str:
    """Where the account's learned rate is kept: each provider's account has its own."""
    return provider_facts(provider).account_key(RATE_LIMIT_KEY)


class LeasesPart(RunnerBase):
    async def _claim(self, free: int, ahead: int, now: float) -> list[Task]:
        """One claim transaction: up to `free` tasks, of them at most `ahead` still to be created."""
        started = time.perf_counter()
        claimed = await self.store.claim(self.job, self.worker_id, free, now, now + self.config.lease_s,
                                         pending=ahead, provider=self.provider.name)  # fmt: skip
        self.progress.claims += 1
        self.progress.claimed += len(claimed)
        self.progress.claim_s += time.perf_counter() - started
        # a claim that left slots free took every task that was due (submitted ones first)
        self._next_look = now + LOOK_AGAIN_S if len(claimed) < free else now
        to_create = [t for t in claimed if t.status in (TaskStatus.PENDING, TaskStatus.UNKNOWN)]
        if ahead:
            self._draining = len(to_create) < min(ahead, free)
        self._to_create.update(t.id for t in to_create)
        if self._quota_probe and to_create:
            self._probe_busy = True
        return claimed

    def _claim_due(self, free: int, ahead: int, now: float) -> bool:
        """Is a claim worth its transaction? With work in hand, only for a batch: enough free slots, and either
        creates running low while the store has more (refilled by half the prefetch at a time, not one by one
        as each is sent), or time to look again after a claim that found nothing more."""
        if free <= 0:
            return False
        if not self._active:
            return True
        if not self._worth_a_claim():
            return False
        return (not self._draining and ahead >= max(1, self._prefetch() // 2)) or now >= self._next_look

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            now = self._now()
            try:
                await self.store.measure_clock(self.clock())
                now = self._now()
                await self.store.heartbeat(self.worker_id, now, now + self.config.lease_s)
                await self._take_over_dead_workers(now)  # a worker that died mid-run: its tasks come back
                await self._remember(now)
            except BatcherError as e:  # keep going: the next beat may succeed before the lease runs out
                log.warning("heartbeat failed: %s", e.message)

    async def _take_over_dead_workers(self, now: float) -> None:
        """A worker on this host whose process is gone, or any whose heartbeat stopped, lets go of its tasks."""
        host = socket.gethostname()
        for w in await self.store.live_workers():
            if w["id"] == self.worker_id:
                continue
            gone = w["host"] == host and not _pid_alive(int(w["pid"]))
            silent = w["heartbeat_at"] < now - self.config.lease_s
            if gone or silent:
                log.info("taking over from stopped worker %s", w["id"])
                await self.store.stop_worker(w["id"], now, dead=True)
                self._next_look = 0.0  # its tasks are free to take now
        await self.store.recover(self.job.id, now)
        # stray replies nobody polls any more (their worker stopped or died): finish them here
        lease_until = now + self.config.lease_s
        for stray in await self.store.claim_strays(self.job.id, now, lease_until, self.provider.name):
            self._poll_stray(stray)

    # --- what a run learned, kept for the next one to start warm ------------------------------------------

    def _warm_start(self, learned: dict[str, Any]) -> None:
        for name, value in learned.items():
            if name.startswith(FIRST_POLL_PREFIX) and isinstance(value, int | float) and value > 0:
                self.first_polls[name[len(FIRST_POLL_PREFIX) :]] = FirstPollTracker(float(value))

    async def _remember(self, now: float) -> None:
        """Keep what this run learned (the account's limit, when to poll) for the next run to start warm."""
        values: dict[str, Any] = {
            f"{FIRST_POLL_PREFIX}{model}": round(t.seconds, 3)
            for model, t in self.first_polls.items()
            if t.observations >= MIN_OBSERVATIONS
        }
        limit = self.provider.gate.control.found_limit
        if limit is not None:
            values[rate_limit_key(self.provider.name)] = round(limit, 3)
        if values:
            await self.store.remember(values, now)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
