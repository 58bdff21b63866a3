"""The worker pool: claims tasks from the store and drives each one to a final state through its provider.

The store is the truth. A submit is preceded by a committed intent (`submitting`) and followed at once by the
committed handle (`submitted`); a submitted task is only ever checked again, never submitted again. Everything
this process holds is under a lease it renews; a task whose lease runs out may be taken over by another worker,
and the claim token on every write keeps the old holder from touching it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from batcher.errors import BatcherError
from batcher.models import TaskStatus
from batcher.outputs import sweep_stale_parts
from batcher.runner.base import RunResult, StopReason, log
from batcher.runner.leases import LeasesPart
from batcher.runner.lifecycle import LifecyclePart
from batcher.store import Stray, Task

IDLE_WAIT_S = 1.0  # longest sleep of the claim loop when nothing is due, seconds
TAKEOVER_EVERY_S = 2.0  # an idle worker looks for dead peers this often, seconds
STALE_PART_S = 900.0  # a .part file this old belongs to no live download (timeouts are far shorter), seconds
STOP_GRACE_S = 15.0  # after a stop, how long submits already on the wire may take to answer, seconds
WAIT_SHOWN_S = 2.0  # a wait shorter than this is not worth a line, seconds
GATHER_S = 0.02  # a task's progress may wait this long for others to share its commit (writer.py), seconds


class Runner(LeasesPart, LifecyclePart):
    """Drains one job through one provider. `await run()`; `request_stop()` from a signal handler stops it
    gracefully."""

    async def run(self) -> RunResult:
        self.store.writer.gather_s = GATHER_S
        await self.store.measure_clock(self.clock())
        now = self._now()
        await self.store.register_worker(self.worker_id, socket.gethostname(), os.getpid(), self.job.name, now)
        await self._take_over_dead_workers(now)
        await self._init_progress()
        # tasks an earlier run's per-day quota stop left waiting for the reset: one goes now (the quota may have
        # been raised); refused again, the run stops at once with the reset time, else the rest go after it
        self._quota_probe = await self.store.quota_due(self.job, now, every=False) > 0
        self._warm_start(await self.store.learned())
        self._twins = await self.store.cached_twins(self.job) if self.config.use_cache else set()
        swept = 0 if self.remote else await asyncio.to_thread(sweep_stale_parts, self.output_dir, STALE_PART_S,
                                                                 time.time())  # fmt: skip
        if swept:
            log.info("removed %d half-written downloads left by a killed run", swept)
        heartbeat = asyncio.create_task(self._heartbeat(), name="batcher-heartbeat")
        try:
            reason = await self._loop()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._wind_down()
            with contextlib.suppress(BatcherError):
                await self._remember(self._now())
            await self.store.stop_worker(self.worker_id, self._now())
        left, _ = await self.store.next_due(self.job, self._now())
        elsewhere = await self.store.held_elsewhere(self.job, self.provider.name)
        return RunResult(reason, self._fatal, left, self.progress, elsewhere)

    async def _loop(self) -> str:
        while True:
            if self._fatal is not None:
                return StopReason.FATAL
            if self._stopping:
                return StopReason.INTERRUPTED
            self._wake.clear()
            now = self._now()
            free = self.config.max_in_flight - len(self._active)
            claimed: list[Task] = []
            # submits are claimed only a little ahead of the rate, so other workers get their share
            ahead = 0 if self._budget_blocked else max(0, self._prefetch() - len(self._to_create))
            if self._quota_probe:  # one create at a time until the quota answers (it may still be spent)
                ahead = 0 if self._probe_busy else min(ahead, 1)
            if self._claim_due(free, ahead, now):
                claimed = await self._claim(free, ahead, now)
                for task in claimed:
                    self._active[task.id] = asyncio.create_task(self._drive(task), name=f"task-{task.key}")
                self.progress.in_flight = len(self._active)
            if claimed and (len(claimed) == free or not self._draining):
                await self._wake.wait()
                continue
            if not self._active:
                # what another provider holds is not this run's to wait for (it is left to a run through it)
                left, due = await self.store.next_due(self.job, now, self.provider.name, shards=False)
                if left == 0 and not self._strays:
                    return StopReason.DONE
                if now - self._last_takeover >= TAKEOVER_EVERY_S:  # idle while others hold work: are they alive?
                    self._last_takeover = now
                    await self._take_over_dead_workers(now)
                if self._budget_blocked and not await self._budget_has_room():
                    if not self._strays and not await self._others_in_flight():
                        return StopReason.BUDGET
                wait = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(due - now, 0.01))
                if left:
                    self.progress.detail = await self._waiting_for(now, due)
            else:
                self.progress.detail = ""
                wait = IDLE_WAIT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _waiting_for(self, now: float, due: float | None) -> str:
        """What the progress line says while nothing is in flight: what the run waits for, and until when."""
        if self._budget_blocked:
            return "nothing in flight: the budget is spent, waiting for other workers' creates to end"
        if due is None or due <= now + WAIT_SHOWN_S:
            return "nothing in flight: waiting for tasks other workers hold, or for their inputs"
        until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(due - self.store.clock_offset))
        waits = await self.store.next_wait(self.job, now)
        why = f" ({_first_line(waits[1])})" if waits is not None and waits[1] else " (another worker's lease)"
        return f"nothing in flight: waiting until {until} for the next task due{why}"

    async def _budget_has_room(self) -> bool:
        """Reads only: has a reservation been let go of (a generation that failed, a refused submit) since the
        budget stopped this worker's submits? Then submitting may go on."""
        budget = self.config.budget_micros
        unit = min(self.prices.values(), default=0)
        if budget is not None and await self.store.committed_micros(self.job.id) + unit <= budget:
            self._budget_blocked = False
            self._next_look = 0.0
            return True
        return False

    async def _others_in_flight(self) -> bool:
        """Submitted work held by nobody (or by others) still has to finish before a budget stop."""
        counts = (await self.store.status_counts()).get(self.job.name, {})
        return any(counts.get(s, 0) for s in (TaskStatus.SUBMITTED, TaskStatus.SUBMITTING))

    def request_stop(self) -> None:
        """Stop submitting; let submits on the wire record their replies; leave submitted tasks to a resume."""
        self._stopping = True
        for t in self._strays.values():
            t.cancel()
        for task_id, t in self._active.items():
            if task_id in self._polling:
                t.cancel()
        self._wake.set()

    async def _wind_down(self) -> None:
        for t in self._strays.values():  # checked again by the next run that claims them
            t.cancel()
        await asyncio.gather(*self._strays.values(), return_exceptions=True)
        if not self._active:
            return
        self._stopping = True
        for task_id, t in list(self._active.items()):
            if task_id in self._polling:  # submits on the wire may record their replies, even after a fatal error
                t.cancel()
        _, pending = await asyncio.wait(list(self._active.values()), timeout=STOP_GRACE_S)
        for t in pending:  # a submit still without a reply: it stays `submitting`, so resume treats it as unknown
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _poll_stray(self, stray: Stray) -> None:
        if stray.id in self._strays:
            return
        t = asyncio.create_task(self._finish_stray(stray), name=f"stray-{stray.remote_task_id}")
        self._strays[stray.id] = t

        def finished(_: asyncio.Task[None]) -> None:
            self._strays.pop(stray.id, None)
            self._wake.set()

        t.add_done_callback(finished)

    async def _init_progress(self) -> None:
        ledger = await self.store.ledger(self.job)
        c = ledger.counts
        self.progress.total = sum(c.values())
        self.progress.done_before = c.get(TaskStatus.SUCCEEDED, 0) + c.get(TaskStatus.FAILED, 0)
        self.progress.spent_micros = ledger.cost_micros


def _first_line(text: str, limit: int = 160) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
