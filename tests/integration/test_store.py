"""The job store on a real SQLite file: idempotent import, fenced claims, recovery of interrupted creates."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from batcher.errors import ManifestError, Problem
from batcher.models import CallRecord, Failure, JobSettings, TaskSpec, TaskStatus, import_batches
from batcher.store import ClaimLost, Store, changes, database, writer
from batcher.store.tables import tasks
from tests.conftest import OpenStore

MODEL = "gemini-3.1-flash-lite-image"


def specs(n: int, prefix: str = "p") -> list[TaskSpec]:
    return [
        TaskSpec(MODEL, f"{prefix} {i}", "1K", "1x1", f"{prefix}-{i}.png", source=f"m.yaml:{i + 1}") for i in range(n)
    ]


def call(kind: str = "create") -> CallRecord:
    return CallRecord(kind, "ok", 200, 1.0, time.time())


async def imported(store: Store, items: list[TaskSpec], name: str = "job") -> int:
    result = await store.import_manifest(
        JobSettings(name, "out"), "m.yaml", import_batches(items), extra={}, now=time.time()
    )
    return result.added


async def test_reimport_adds_only_new_tasks_and_retires_removed_ones(open_store: OpenStore) -> None:
    store = await open_store()
    assert await imported(store, specs(10)) == 10
    assert await imported(store, specs(10)) == 0
    edited = specs(8) + specs(3, prefix="new")  # two rows removed, three added
    assert await imported(store, edited) == 3
    counts = (await store.status_counts())["job"]
    assert counts == {"pending": 11, "retired": 2}
    job = await store.job("job")
    now = time.time()
    claimed = await store.claim(job, "w", 100, now, now + 30)
    assert sorted(t.prompt for t in claimed) == sorted(s.prompt for s in edited)


async def test_identical_rows_are_one_task(open_store: OpenStore) -> None:
    store = await open_store()
    items = specs(5) + specs(5)
    result = await store.import_manifest(
        JobSettings("job", "out"), "m.yaml", import_batches(items), extra={}, now=time.time()
    )
    assert (result.rows, result.added) == (10, 5)


async def test_a_manifest_error_mid_stream_writes_nothing(open_store: OpenStore) -> None:
    store = await open_store()

    def broken() -> Iterator[TaskSpec]:
        yield from specs(7000)  # more than one insert batch
        raise ManifestError([Problem("m.yaml", 9000, None, "bad row")])

    with pytest.raises(ManifestError):
        await store.import_manifest(
            JobSettings("job", "out"), "m.yaml", import_batches(broken()), extra={}, now=time.time()
        )
    assert await store.status_counts() == {}
    assert await store.jobs() == []


async def test_an_import_gives_back_its_page_cache_whether_it_succeeds_or_fails(open_store: OpenStore) -> None:
    store = await open_store()

    async def cache_kib() -> int:
        async def op(conn: changes.WriteConnection) -> int:
            return -int((await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one())

        return await store.writer.run(op, alone=True)  # alone: on the connection imports use

    def broken() -> Iterator[TaskSpec]:
        yield from specs(10, "q")
        raise ManifestError([Problem("m.yaml", 12, None, "bad row")])

    assert await imported(store, specs(10)) == 10
    assert await cache_kib() == database.CACHE_KIB < database.IMPORT_CACHE_KIB
    with pytest.raises(ManifestError):
        await store.import_manifest(
            JobSettings("job", "out"), "m.yaml", import_batches(broken()), extra={}, now=time.time()
        )
    assert await cache_kib() == database.CACHE_KIB


async def test_claims_are_disjoint_and_fenced(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(6))
    job = await store.job("job")
    now = time.time()
    a = await store.claim(job, "a", 4, now, now + 30)
    b = await store.claim(job, "b", 4, now, now + 30)
    assert len(a) == 4 and len(b) == 2
    assert not {t.id for t in a} & {t.id for t in b}
    # a's lease runs out; b takes the task over; a can no longer write it
    later = now + 60
    taken = await store.claim(job, "b", 1, later, later + 30)
    assert taken[0].id == a[0].id
    with pytest.raises(ClaimLost):
        await store.begin_create(a[0], later)
    await store.begin_create(taken[0], later)
    assert taken[0].status is TaskStatus.SUBMITTING


async def test_a_create_interrupted_before_its_reply_becomes_unknown(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(2))
    job = await store.job("job")
    now = time.time()
    t1, t2 = await store.claim(job, "w", 2, now, now + 30)
    await store.begin_create(t1, now)
    await store.begin_create(t2, now)
    await store.created(t2, "remote-2", None, call(), now)
    # the worker dies: its lease ends; recovery finds t1 in the unknown window, t2 safely submitted
    assert await store.recover(job.id, now + 31) == 1
    counts = (await store.status_counts())["job"]
    assert counts == {"unknown": 1, "submitted": 1}
    again = await store.claim(job, "w2", 5, now + 31, now + 61)
    by_id = {t.id: t for t in again}
    assert by_id[t2.id].status is TaskStatus.SUBMITTED and by_id[t2.id].remote_task_id == "remote-2"
    assert by_id[t1.id].status is TaskStatus.UNKNOWN and by_id[t1.id].unknown_count == 1


async def test_a_submitted_task_can_never_be_created_again(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(1))
    job = await store.job("job")
    now = time.time()
    (t,) = await store.claim(job, "w", 1, now, now + 30)
    await store.begin_create(t, now)
    await store.created(t, "r1", 67_000, call(), now)
    with pytest.raises(ClaimLost):  # the fenced update requires pending/unknown: it matches no row
        await store.begin_create(t, now)


async def test_the_store_file_is_private(open_store: OpenStore, tmp_path: Path) -> None:
    await open_store("private.db")
    mode = stat.S_IMODE(os.stat(tmp_path / "private.db").st_mode)
    assert mode == 0o600


async def test_call_records_are_appended_with_the_next_commit(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(1))
    job = await store.job("job")
    now = time.time()
    (t,) = await store.claim(job, "w", 1, now, now + 30)
    store.log_call(t, call("query"))
    await store.writer.flush()
    rows = await store.calls(job)
    assert [(r["kind"], r["task_id"]) for r in rows] == [("query", t.id)]


async def test_changes_grouped_in_one_commit_are_fenced_each(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(3))
    job = await store.job("job")
    now = time.time()
    mine = await store.claim(job, "a", 3, now, now + 30)
    later = now + 60
    (taken,) = await store.claim(job, "b", 1, later, later + 30)  # a's lease ran out; b took one task
    # the three land in one group commit: two go through, the one taken over is refused alone
    outcomes = await asyncio.gather(*(store.begin_create(t, later) for t in mine), return_exceptions=True)
    lost = [t.id for t, o in zip(mine, outcomes, strict=True) if isinstance(o, ClaimLost)]
    assert lost == [taken.id]
    assert (await store.status_counts())["job"] == {"submitting": 2, "pending": 1}


async def test_writes_wait_for_a_lock_held_elsewhere_without_blocking_the_loop(
    open_store: OpenStore, tmp_path: Path
) -> None:
    store = await open_store()
    await imported(store, specs(1))
    job = await store.job("job")
    now = time.time()
    (t,) = await store.claim(job, "w", 1, now, now + 30)
    other = sqlite3.connect(tmp_path / "batcher.db", isolation_level=None)  # as another process would
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(store.begin_create(t, now))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the write waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not write.done()
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(write, 10)
    assert t.status is TaskStatus.SUBMITTING
    assert (await store.status_counts())["job"] == {"submitting": 1}


async def test_status_counts_stay_in_step_with_the_tasks(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(6))
    job = await store.job("job")
    now = time.time()
    t1, t2, t3 = await store.claim(job, "w", 3, now, now + 30)
    for t in (t1, t2, t3):
        await store.begin_create(t, now)
    await store.created(t2, "r2", None, call(), now)
    await store.failed(t3, "no", call(), now, failure=Failure.REFUSED)
    await imported(store, specs(4) + specs(2, prefix="new"))  # two pending tasks retired, two added
    rows = await store._rows(
        select(tasks.c.status, func.count()).where(tasks.c.job_id == job.id).group_by(tasks.c.status)
    )
    truth = {status: n for status, n in rows}
    counts = (await store.status_counts())["job"]
    assert counts == {"submitting": 1, "submitted": 1, "failed": 1, "pending": 3, "retired": 2}
    assert sum(counts.values()) == sum(truth.values()) == 8


async def test_checkpoints_between_group_commits_keep_every_change(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 2)
    checkpoints = 0
    real = writer.Writer._checkpoint

    async def counted(self: writer.Writer) -> None:
        nonlocal checkpoints
        await real(self)
        checkpoints += 1

    monkeypatch.setattr(writer.Writer, "_checkpoint", counted)
    store = await open_store()
    await imported(store, specs(5))
    job = await store.job("job")
    now = time.time()
    for t in await store.claim(job, "w", 5, now, now + 30):  # one group commit each, a checkpoint every two
        await store.begin_create(t, now)
        await store.created(t, f"r{t.id}", None, call(), now)
    await store.close()
    assert checkpoints >= 4 and "checkpointing" not in caplog.text
    reopened = await open_store()
    assert (await reopened.status_counts())["job"] == {"submitted": 5}


async def test_patient_changes_wait_for_company_and_a_prompt_one_commits_them_at_once(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(3))
    job = await store.job("job")
    now = time.time()
    first, *others = await store.claim(job, "w", 3, now, now + 30)
    await store.begin_create(first, now)  # gather_s is 0 until a runner sets it: committed at once
    store.writer.gather_s = 30.0
    groups = store.writer.groups
    waiting = [asyncio.create_task(store.begin_create(t, now)) for t in others]  # a task's progress: patient
    store.log_call(first, call("query"))
    await asyncio.sleep(0.1)
    assert not any(w.done() for w in waiting) and store.writer.groups == groups
    # both well inside the 30 s window: the prompt change did not wait it out
    await asyncio.wait_for(store.created(first, "r1", None, call(), now), 5)  # ends the unknown window: prompt
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert store.writer.groups == groups + 1  # all four in one commit
    assert (await store.status_counts())["job"] == {"submitted": 1, "submitting": 2}
    assert [r["kind"] for r in await store.calls(job)] == ["query", "create"]


async def test_a_patient_change_waits_no_longer_than_the_window_or_a_full_group(
    monkeypatch: pytest.MonkeyPatch,  # first: undone after the store has closed, on the clock it ran on
    open_store: OpenStore,
) -> None:
    store = await open_store()
    await imported(store, specs(4))
    job = await store.job("job")
    now = time.time()
    claimed = await store.claim(job, "w", 4, now, now + 30)
    # the loop's clock runs ahead when the test says so: the window passes without a real wait to measure
    loop = asyncio.get_running_loop()
    real_time, ahead = loop.time, [0.0]
    monkeypatch.setattr(loop, "time", lambda: real_time() + ahead[0])
    store.writer.gather_s = 30.0
    begun = asyncio.create_task(store.begin_create(claimed[0], now))
    await asyncio.sleep(0.05)
    assert not begun.done()  # waiting for company
    ahead[0] += 30.0  # the window has passed
    await asyncio.wait_for(begun, 5)
    monkeypatch.setattr(writer, "MAX_GROUP", 3)
    store.writer.gather_s = 30.0
    groups = store.writer.groups
    gathering = asyncio.create_task(store.begin_create(claimed[1], now))
    await asyncio.sleep(0.05)
    assert not gathering.done()
    await asyncio.wait_for(asyncio.gather(gathering, *(store.begin_create(t, now) for t in claimed[2:])), 5)
    assert store.writer.groups == groups + 1  # the group filled up: committed without waiting out the window


async def test_a_failed_commit_of_posted_records_neither_loses_them_nor_stops_the_writer(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    await imported(store, specs(1))
    job = await store.job("job")
    now = time.time()
    (t,) = await store.claim(job, "w", 1, now, now + 30)
    failed_once = asyncio.Event()

    async def flaky(conn: changes.WriteConnection) -> None:  # a write that fails its first commit only
        if not failed_once.is_set():
            failed_once.set()
            raise RuntimeError("disk hiccup")

    store.log_call(t, call("query"))
    store.writer.post(flaky)
    await failed_once.wait()  # that group rolled back; nobody awaited it
    await store.writer.flush()  # the writer goes on, and the records were tried once more
    assert [r["kind"] for r in await store.calls(job)] == ["query"]
    await store.begin_create(t, time.time())  # and so does every change after it


async def test_a_posted_record_that_fails_twice_is_dropped_and_the_writer_goes_on(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(1))
    job = await store.job("job")
    now = time.time()
    (t,) = await store.claim(job, "w", 1, now, now + 30)
    tries = 0
    failed = asyncio.Event()

    async def broken(conn: changes.WriteConnection) -> None:
        nonlocal tries
        tries += 1
        failed.set()
        raise RuntimeError("never writable")

    store.writer.post(broken)
    await failed.wait()
    for _ in range(3):  # tried once more (alone, so these flushes do not fail with it), then dropped
        await store.writer.flush()
    assert tries == 2
    store.log_call(t, call("query"))
    await store.writer.flush()
    assert [r["kind"] for r in await store.calls(job)] == ["query"]


async def test_a_task_an_api_may_hold_is_claimed_only_by_a_run_through_that_api(open_store: OpenStore) -> None:
    store = await open_store()
    await imported(store, specs(4))
    job = await store.job("job")
    now = time.time()
    sent, maybe, *_ = await store.claim(job, "a", 2, now, now + 30)
    for t in (sent, maybe):
        await store.begin_create(t, now, provider="linkmodel")
    await store.created(sent, "r-1", None, call(), now)
    await store.create_unknown(maybe, "reset", call(), now, retry_at=now)
    await store.release(sent, now)
    later = now + 1
    # a run through Gemini takes only the two tasks never sent; LinkModel's two wait for a run through it
    gemini = await store.claim(job, "b", 10, later, later + 30, provider="gemini")
    assert {t.status for t in gemini} == {TaskStatus.PENDING} and len(gemini) == 2
    for t in gemini:
        await store.release(t, later)
    assert (await store.next_due(job, later, "gemini"))[0] == 2
    assert (await store.next_due(job, later))[0] == 4
    linkmodel = await store.claim(job, "c", 10, later, later + 30, provider="linkmodel")
    assert {t.remote_task_id for t in linkmodel if t.status is TaskStatus.SUBMITTED} == {"r-1"}
    assert {t.status for t in linkmodel} == {TaskStatus.SUBMITTED, TaskStatus.UNKNOWN, TaskStatus.PENDING}


async def test_a_group_keeps_the_order_of_changes_to_one_task(open_store: OpenStore) -> None:
    # One commit may hold task a's failure, then b's billing and b's failure (a busy writer, a loaded machine).
    # Batching rows by statement ran both failures first; b's billing then found b no longer submitted and
    # its cost was lost: the ledger billed one call where the API billed two.
    store = await open_store()
    await imported(store, specs(2))
    job = await store.job("job")
    now = time.time()
    a, b = await store.claim(job, "w", 2, now, now + 30)
    for t in (a, b):
        await store.begin_create(t, now)
        await store.created(t, f"r{t.id}", None, call(), now)
    store.billed(a, 67_000, 0, now)
    await store.writer.flush()
    store.writer.gather_s = 30.0  # patient changes wait for company: the three below share one commit
    groups = store.writer.groups
    fail_a = asyncio.create_task(store.failed(a, "paid, not an image", None, now, failure=Failure.DOWNLOAD))
    await asyncio.sleep(0)  # a's failure is queued first
    store.billed(b, 67_000, 0, now)
    fail_b = asyncio.create_task(store.failed(b, "paid, not an image", None, now, failure=Failure.DOWNLOAD))
    await asyncio.sleep(0)
    await store.writer.flush()
    await asyncio.wait_for(asyncio.gather(fail_a, fail_b), 5)
    assert store.writer.groups == groups + 1
    ledger = await store.ledger(job)
    assert (ledger.paid_unusable, ledger.billed_calls, ledger.cost_micros) == (2, 2, 2 * 67_000)


async def test_a_worker_s_stop_commits_after_the_changes_queued_before_it(open_store: OpenStore) -> None:
    # A graceful stop queues the worker's release of its claims (an op) right behind a task's billing and success
    # (patient row changes still waiting for company). Ops run ahead of the row changes of their group: the
    # release, in the same group, cleared the claim token first, both fenced changes then matched no row, and the
    # success was lost while its image stood under the task's name. The release now commits on its own, after.
    store = await open_store()
    await imported(store, specs(1))
    job = await store.job("job")
    now = time.time()
    (t,) = await store.claim(job, "w", 1, now, now + 30)
    await store.begin_create(t, now)
    await store.created(t, "r1", None, call(), now)
    await store.writer.flush()
    store.writer.gather_s = 30.0  # the billing and the success wait for company: the stop's op comes meanwhile
    store.billed(t, 67_000, 0, now)
    success = asyncio.create_task(store.succeeded(
        t, output_path="out/p-0.png", sha256="0" * 64, size=10, width=1, height=1, fmt="png", cost_micros=67_000,
        call=call("download"), now=now,
    ))  # fmt: skip
    await asyncio.sleep(0)
    await store.stop_worker("w", now)
    await asyncio.wait_for(success, 5)
    ledger = await store.ledger(job)
    assert (ledger.counts.get(TaskStatus.SUCCEEDED), ledger.billed_calls, ledger.cost_micros) == (1, 1, 67_000)
    async with store.engine.connect() as conn:  # and the stop let go of the claim all the same
        assert tuple((await conn.execute(select(tasks.c.claimed_by, tasks.c.claim_token))).one()) == (None, None)
