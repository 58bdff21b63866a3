"""Property test of the task state machine on a real store: whatever workers, leases, crashes and replies do,
a task the API holds is never created again (except after the API said its generation failed), a finished
task never goes back to work, no remote id whose reply reached a worker is dropped (a reply after a takeover
included), and every create whose reply was lost is counted as a possible double charge."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import select

from batcher.models import CallRecord, Failure, JobSettings, TaskSpec, TaskStatus, import_batches
from batcher.store import ClaimLost, Store, Task
from batcher.store.tables import strays, tasks

MODEL = "gemini-3.1-flash-lite-image"
TASKS = 3
WORKERS = ("w1", "w2")
LEASE = 30.0


def _call() -> CallRecord:
    return CallRecord("create", "ok", 200, 1.0, time.time())


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.now = 1_000_000.0
        self.held: dict[str, dict[int, Task]] = {w: {} for w in WORKERS}
        self.api_holds: dict[int, bool] = {}  # task id -> the API holds a live generation for it
        self.finished: dict[int, str] = {}
        self.creates = 0
        # every create the API accepted: task id -> [remote id, its reply reached the worker, it ended unbilled]
        self.accepted: dict[int, list[list[Any]]] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def setup(self) -> None:
        self.store: Store = self.run(Store.open(str(Path(self.dir.name) / "s.db")))
        specs = [TaskSpec(MODEL, f"p{i}", "1K", "1x1", f"{i}.png") for i in range(TASKS)]
        self.run(
            self.store.import_manifest(JobSettings("j", "out"), "m", import_batches(specs), extra={}, now=self.now)
        )
        self.job = self.run(self.store.job("j"))

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.run(self.store.close())
        self.loop.close()
        self.dir.cleanup()

    def _try(self, worker: str, task: Task, coro: Any) -> bool:
        try:
            self.run(coro)
            return True
        except ClaimLost:
            self.held[worker].pop(task.id, None)
            return False

    def _pick(self, worker: str, data: st.DataObject) -> Task | None:
        tasks = sorted(self.held[worker].values(), key=lambda t: t.id)
        return data.draw(st.sampled_from(tasks)) if tasks else None

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(1, TASKS))
    def claim(self, worker: str, n: int) -> None:
        for t in self.run(self.store.claim(self.job, worker, n, self.now, self.now + LEASE)):
            assert t.id not in self.finished, "a finished task was claimed"
            # the other worker keeps its old handle: a worker whose lease ran out does not know it yet (a paused
            # VM), and may still send a create, or get a reply, for a task taken over from it
            self.held[worker][t.id] = t

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def send_create(self, worker: str, data: st.DataObject) -> None:
        task = self._pick(worker, data)
        if task is None:
            return
        # tried whatever the worker believes the task's state is: only the store's guards may refuse it
        if self._try(worker, task, self.store.begin_create(task, self.now)):
            assert not self.api_holds.get(task.id), "a task the API holds was created again"
            self.creates += 1

    @rule(worker=st.sampled_from(WORKERS), data=st.data(), reply=st.sampled_from(["accepted", "lost", "refused"]))
    def create_reply(self, worker: str, data: st.DataObject, reply: str) -> None:
        task = self._pick(worker, data)
        if task is None or task.status is not TaskStatus.SUBMITTING:
            return
        self._reply(worker, task, reply)

    async def _remote_of(self, task_id: int) -> str | None:
        rows = await self.store._read(select(tasks.c.remote_task_id).where(tasks.c.id == task_id))
        return str(rows[0]["remote_task_id"]) if rows[0]["remote_task_id"] is not None else None

    def _reply(self, worker: str, task: Task, reply: str) -> None:
        if reply in ("accepted", "lost"):  # either way the API holds a generation, and bills it
            remote = f"r{task.id}-{sum(map(len, self.accepted.values()))}"
            self.accepted.setdefault(task.id, []).append([remote, reply == "accepted", False])
        if reply == "accepted":
            self._try(worker, task, self.store.created(task, remote, None, _call(), self.now))
            # the task holds it (its own reply, or a late one it adopted), or else a stray keeps it
            self.api_holds[task.id] = self.run(self._remote_of(task.id)) == remote
        elif reply == "lost":  # the API may hold it, but nobody knows: it must go through `unknown`
            self.api_holds[task.id] = False
            self._try(worker, task, self.store.create_unknown(task, "lost", _call(), self.now))
        else:
            self._try(worker, task, self.store.retry_later(task, self.now, "503", _call(), self.now))
            self.held[worker].pop(task.id, None)

    @rule(worker=st.sampled_from(WORKERS), data=st.data(), outcome=st.sampled_from(["success", "failed", "give_up"]))
    def generation_ends(self, worker: str, data: st.DataObject, outcome: str) -> None:
        task = self._pick(worker, data)
        if task is None or task.status is not TaskStatus.SUBMITTED:
            return
        if outcome == "success":
            ok = self._try(worker, task, self.store.succeeded(
                task, output_path="x", sha256="0" * 64, size=1, width=1, height=1, fmt="png", cost_micros=1,
                call=None, now=self.now))  # fmt: skip
            if ok:
                self.finished[task.id] = "succeeded"
        elif outcome == "failed":  # the API said Failed: a new create is legitimate
            if self._try(worker, task, self.store.retry_later(task, self.now, "Failed", None, self.now,
                                                              generation_failed=True)):  # fmt: skip
                self.api_holds[task.id] = False
                for entry in self.accepted.get(task.id, []):
                    if entry[0] == task.remote_task_id:
                        entry[2] = True  # that generation ended unbilled
        elif self._try(worker, task, self.store.failed(task, "gave up", None, self.now, failure=Failure.TRANSIENT)):
            self.finished[task.id] = "failed"
        self.held[worker].pop(task.id, None)

    @rule(paused=st.sampled_from(WORKERS), reply=st.sampled_from(["accepted", "lost"]),
          retaken=st.booleans())  # fmt: skip
    def reply_after_a_takeover(self, paused: str, reply: str, retaken: bool) -> None:
        """A worker sends a create and is paused (a VM, a blocked heartbeat) until its lease runs out; the other
        worker takes the task over (and, `retaken`, creates it again); then the paused one's reply arrives."""
        other = next(w for w in WORKERS if w != paused)
        self.claim(paused, 1)
        mine = [t for t in self.held[paused].values() if t.status in (TaskStatus.PENDING, TaskStatus.UNKNOWN)]
        if not mine or not self._try(paused, mine[0], self.store.begin_create(mine[0], self.now)):
            return
        task = mine[0]
        self.creates += 1
        self.now += LEASE + 1
        self.run(self.store.recover(self.job.id, self.now))
        self.claim(other, TASKS)
        if retaken and task.id in self.held[other]:
            self._try(other, self.held[other][task.id], self.store.begin_create(self.held[other][task.id], self.now))
        self.held[paused][task.id] = task  # the paused worker still holds its old handle
        self._reply(paused, task, reply)

    @rule(seconds=st.sampled_from([1.0, LEASE + 1]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(worker=st.sampled_from(WORKERS))
    def worker_crashes(self, worker: str) -> None:
        self.run(self.store.stop_worker(worker, self.now, dead=True))
        self.held[worker].clear()

    @rule()
    def recovery(self) -> None:
        self.run(self.store.recover(self.job.id, self.now))

    @precondition(lambda self: hasattr(self, "store"))
    @invariant()
    def no_paid_remote_id_is_dropped_and_every_lost_reply_is_counted(self) -> None:
        async def known() -> tuple[set[str], dict[int, int]]:
            ids = {r["remote_task_id"] for r in await self.store._read(select(tasks.c.remote_task_id))}
            ids |= {r["remote_task_id"] for r in await self.store._read(select(strays.c.remote_task_id))}
            unknown = {r["id"]: r["unknown_count"] for r in await self.store._read(select(tasks.c.id,
                                                                                         tasks.c.unknown_count))}  # fmt: skip
            return ids, unknown

        ids, unknown = self.run(known())
        for task_id, entries in self.accepted.items():
            for remote, delivered, ended in entries:
                assert not delivered or ended or remote in ids, f"the paid remote id {remote} was dropped"
            lost = sum(1 for _, delivered, ended in entries if not delivered and not ended)
            assert lost <= unknown[task_id], f"task {task_id}: {lost} lost replies, {unknown[task_id]} counted"

    @precondition(lambda self: hasattr(self, "store"))
    @invariant()
    def finished_tasks_stay_finished(self) -> None:
        async def statuses() -> dict[int, str]:
            return {r["id"]: r["status"] async for r in self.store.task_rows(self.job)}

        now = self.run(statuses())
        for task_id, status in self.finished.items():
            assert now[task_id] == status


StoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip
TestStoreStateMachine = StoreMachine.TestCase
