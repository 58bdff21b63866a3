"""Property test of the task state machine on a real store: whatever workers, leases, crashes and replies do,
a task the API holds is never created again (except after the API said its generation failed), and a finished
task never goes back to work."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from batcher.models import CallRecord, Failure, JobSettings, TaskSpec, TaskStatus, import_batches
from batcher.store import ClaimLost, Store, Task

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
            for other in WORKERS:
                self.held[other].pop(t.id, None)
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
        if reply == "accepted":
            self.api_holds[task.id] = True
            self._try(worker, task, self.store.created(task, f"r{task.id}", None, _call(), self.now))
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
        elif self._try(worker, task, self.store.failed(task, "gave up", None, self.now, failure=Failure.TRANSIENT)):
            self.finished[task.id] = "failed"
        self.held[worker].pop(task.id, None)

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
