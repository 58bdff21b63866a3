"""Attacks on Vertex AI batch prediction's money truth over the real CLI, against the Vertex emulator: kills at each
step of a shard's life, a cancel while a create is on its way, a create answered by a gateway with a listing that
lags past the grace period, jobs that end failed, partial, cancelled or expired, a job deleted after it ended, two
workers on one store, a frozen worker, and the cap on jobs at once. Each holds the ledger against the emulator's
own billing, key by key: what the API billed for a key is what the ledger bills for it, or the difference is one
the summary flags (an unknown submission)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Latency
from batcher.emulator.vertex import lifecycle
from batcher.emulator.vertex.server import VertexEmulator
from tests.acceptance.batch_chaos_kit import FreshDatabase
from tests.acceptance.cli_kit import Done, batcher, finish, freeze_outside_a_write, manifest, start
from tests.acceptance.test_batch_money_truth import ledger_by_key
from tests.acceptance.test_money_truth import until
from tests.acceptance.test_vertex_batch import LINE_PRICE, QUICK, STAGING, cli, env_of, staged_objects, usd
from tests.acceptance.test_vertex_online import rows
from tests.conftest import StartVertex


def vmanifest(path: Path, n: int, shard: int = 5, top: dict[str, Any] | None = None, **batch: Any) -> Path:
    return manifest(path, n, batch={"max_requests": shard, "staging": STAGING, **batch}, **(top or {}))


async def run(m: Path, db: Path, env: dict[str, str], cwd: Path, *more: str, timeout: float = 90.0) -> Done:
    return await batcher(*cli(m, db, *more), env=env, cwd=cwd, timeout=timeout)


def money_is_the_apis(head: dict[str, Any], emu: VertexEmulator, db: Path) -> None:
    """The ledger's charges are the emulator's, in total and key by key; its cost is theirs at the batch price."""
    stats = emu.stats
    assert stats.images_billed == 0
    assert ledger_by_key(db) == stats.batch_rows_by_key, (ledger_by_key(db), stats.batch_rows_by_key)
    assert head["billed_calls"] == stats.batch_rows_billed, (head, stats.batch_rows_billed)
    assert head["cost_usd"] == usd(stats.batch_rows_billed * LINE_PRICE), head


def nothing_unflagged(emu: VertexEmulator, db: Path) -> None:
    """What the ledger lacks of the API's billing, key by key, is counted as unknown submissions of that key."""
    flagged = {r["key"]: r["unknown_count"] for r in rows(db)}
    ledger = ledger_by_key(db)
    for key, billed in emu.stats.batch_rows_by_key.items():
        assert billed - ledger.get(key, 0) <= flagged[key], (key, billed, ledger, flagged)


def images(out: Path) -> int:
    return len(list(out.glob("*.png"))) if out.is_dir() else 0


def head_of(done: Done) -> dict[str, Any]:
    assert done.out, done.err
    doc: dict[str, Any] = json.loads(done.out)
    return doc


# --- kills at each step ---------------------------------------------------------------------------------------


async def test_a_kill_after_the_upload_with_no_job_made_then_resume_creates_each_shard_once(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    """The input is staged; every create is answered 503 having made nothing; the run is killed. The resumed run
    finds no job of the shard on complete listings past the grace period and creates it, once."""
    n = 5
    emu = await start_vertex(batch_latency=QUICK, batch_create_503_rate=1.0)
    m = vmanifest(tmp_path / "staged.yaml", n, create_grace_s=1)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)
    await until(lambda: emu.stats.count("job", 503) >= 1 or proc.returncode is not None, "a create answered 503")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert emu.stats.jobs_created == 0 and any(o.endswith("/input.jsonl") for o in staged_objects(emu))
    emu.configure(batch_create_503_rate=0.0)
    done = await run(m, db, env, tmp_path)
    assert done.code == 0, done.err
    head = head_of(done)
    assert head["succeeded"] == n and emu.stats.jobs_created == 1, (head, emu.stats.jobs_by_display_name)
    money_is_the_apis(head, emu, db)
    assert staged_objects(emu) == []


async def test_a_kill_while_collecting_several_files_then_resume_settles_each_line_once(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 6
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=3, image_bytes=3_000_000)
    m = vmanifest(tmp_path / "midcollect.yaml", n, shard=6)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    out = tmp_path / "out" / "midcollect"
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)
    await until(lambda: images(out) >= 1 or proc.returncode is not None, "the first image to be written")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert 1 <= images(out) < n, images(out)
    done = await run(m, db, env, tmp_path)
    assert done.code == 0, done.err
    head = head_of(done)
    assert head["succeeded"] == n and emu.stats.jobs_created == 1, head
    money_is_the_apis(head, emu, db)
    assert images(out) == n and staged_objects(emu) == []


async def test_a_kill_during_the_staging_cleanup_bills_nothing_more(start_vertex: StartVertex, tmp_path: Path) -> None:
    """Killed once the lines are settled (the shard closed), maybe before its staged files are deleted: a resume
    has nothing to collect and creates nothing; at worst the staged files stay (no money)."""
    n = 5
    emu = await start_vertex(batch_latency=QUICK)
    m = vmanifest(tmp_path / "cleanup.yaml", n)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)

    def settled() -> bool:
        try:
            done = [r for r in rows(db) if r["status"] == "succeeded"]
        except sqlite3.OperationalError:  # the store is not made yet
            return False
        return len(done) == n

    await until(lambda: settled() or proc.returncode is not None, "every line to be settled")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    done = await run(m, db, env, tmp_path)
    assert done.code == 0, done.err
    head = head_of(done)
    assert head["succeeded"] == n and emu.stats.jobs_created == 1, head
    money_is_the_apis(head, emu, db)


# --- a create in doubt ----------------------------------------------------------------------------------------


async def test_a_create_answered_by_a_gateway_with_a_listing_lagging_past_the_grace_counts_both_jobs(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    """The create made its job, then a gateway answered 502; the listing lags 30 s (the service's clock) behind a
    create, far past the shard's 1 s grace: the shard is created again. The first job, billed, shows on the
    listing by the time the shard closes: its lines are known duplicates in the ledger, never unflagged."""
    n = 5
    emu = await start_vertex(batch_latency=Latency("fixed", 5.0), batch_create_gateway_rate=1.0,
                             batch_list_lag_s=30.0)  # fmt: skip
    m = vmanifest(tmp_path / "gateway.yaml", n, create_grace_s=1)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)
    await until(lambda: emu.stats.count("job", 502) >= 1 or proc.returncode is not None, "a gateway's 502")
    emu.configure(batch_create_gateway_rate=0.0)
    await until(lambda: emu.stats.jobs_created >= 2 or proc.returncode is not None, "the shard created again")
    emu.advance(60.0)  # both jobs end and bill; the first now shows on the listing
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = head_of(done)
    assert emu.stats.jobs_created == 2 and emu.stats.batch_rows_billed == 2 * n, emu.stats.jobs_by_display_name
    assert head["succeeded"] == n and head["known_duplicates"] == n, (head, done.err)
    money_is_the_apis(head, emu, db)


@pytest.mark.parametrize("lag", [0.0, 30.0])
async def test_cancel_while_a_create_is_on_its_way_cancels_the_job_it_made(
    start_vertex: StartVertex, tmp_path: Path, lag: float
) -> None:
    """The create made its job and its reply waits; `batcher cancel` runs meanwhile (the job on the listing, or
    not yet). The job is cancelled before it runs a row; a later run creates the shard again; nothing is billed
    twice or unflagged."""
    n = 5
    # the job would run 1000 s: still queued when its create's reply goes out, 120 s after the job was made
    emu = await start_vertex(batch_latency=Latency("fixed", 1000.0), batch_create_delay_s=120.0,
                             batch_list_lag_s=lag, batch_queued_s=200.0)  # fmt: skip
    m = vmanifest(tmp_path / "cancelflight.yaml", n, create_grace_s=1)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)
    await until(lambda: emu.stats.jobs_created >= 1 or proc.returncode is not None, "the create to arrive")
    cancelled = await batcher("cancel", "cancelflight", "--db", str(db), env=env, cwd=tmp_path)
    assert cancelled.code == 0 and "Traceback" not in cancelled.err, cancelled.err
    emu.configure(batch_create_delay_s=0.0, batch_latency=QUICK, batch_queued_s=0.0)
    emu.advance(121.0)  # the create's reply goes out
    done = await finish(proc, 90.0)
    assert "Traceback" not in done.err, done.err
    first = next(iter(emu.state.jobs.values()))
    assert first.cancelled_at is not None, "the job made by the create in flight was never cancelled"
    emu.advance(3600.0)
    again = await run(m, db, env, tmp_path)
    assert again.code == 0, again.err
    head = head_of(again)
    assert head["succeeded"] == n, (head, again.err)
    nothing_unflagged(emu, db)
    assert all(n_ == 1 for n_ in emu.stats.batch_rows_by_key.values()), emu.stats.batch_rows_by_key


# --- jobs that end short ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["failed", "partial", "expired", "cancelled"])
async def test_a_job_that_ends_short_has_its_finished_rows_collected_once_and_the_rest_sent_again(
    start_vertex: StartVertex, tmp_path: Path, ending: str
) -> None:
    n = 10
    endings: dict[str, dict[str, Any]] = {
        "failed": {"batch_fail_rate": 1.0},
        "partial": {"batch_partial_rate": 1.0},
        "expired": {"batch_expiry_s": 30.0, "batch_queued_s": 40.0},  # expires before it starts: nothing run
        "cancelled": {"batch_latency": Latency("fixed", 100.0)},
    }
    knobs = endings[ending]
    emu = await start_vertex(**({"batch_latency": Latency("fixed", 10.0)} | knobs), batch_output_files=2)
    m = vmanifest(tmp_path / "short.yaml", n, shard=10)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)
    await until(lambda: emu.stats.jobs_created >= 1 or proc.returncode is not None, "the first job")
    emu.configure(
        batch_fail_rate=0.0, batch_partial_rate=0.0, batch_expiry_s=24 * 3600.0, batch_latency=QUICK, batch_queued_s=0.0
    )
    first = next(iter(emu.state.jobs.values()))
    if ending == "cancelled":  # someone cancels the job at the API half-way through its rows
        emu.advance(55.0)
        lifecycle.cancel(emu.state, first, emu.clock.now())
    else:
        emu.advance(61.0)
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = head_of(done)
    expected = {"failed": "JOB_STATE_FAILED", "partial": "JOB_STATE_PARTIALLY_SUCCEEDED", "expired": "JOB_STATE_EXPIRED",
                "cancelled": "JOB_STATE_CANCELLED"}[ending]  # fmt: skip
    assert emu.stats.jobs_by_state.get(expected) == 1, (emu.stats.jobs_by_state, first)
    assert head["succeeded"] == n, (head, done.err)
    money_is_the_apis(head, emu, db)
    assert all(v == 1 for v in emu.stats.batch_rows_by_key.values())
    assert staged_objects(emu) == []


async def test_a_job_deleted_at_the_api_after_it_ended_is_not_paid_twice(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    """Vertex deletes only an ended job, and deleting it leaves its output in Cloud Storage. A run that finds the
    job gone reads the shard's output folder: what the job billed is collected, not sent and paid again."""
    n = 5
    emu = await start_vertex(batch_latency=QUICK)
    m = vmanifest(tmp_path / "deleted.yaml", n)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    submitted = await run(m, db, env, tmp_path, "--no-wait")
    assert submitted.code == 5, submitted.err
    emu.advance(60.0)
    job = next(iter(emu.state.jobs.values()))
    assert emu.stats.batch_rows_billed == n and job.ended == "JOB_STATE_SUCCEEDED"
    job.deleted = True  # batchPredictionJobs.delete (only an ended job): the job is gone, its files are not
    done = await run(m, db, env, tmp_path)
    head = head_of(done)
    nothing_unflagged(emu, db)
    assert emu.stats.batch_rows_billed == n and head["succeeded"] == n, (head, emu.stats.batch_rows_by_key)
    money_is_the_apis(head, emu, db)
    assert staged_objects(emu) == []


# --- several workers ------------------------------------------------------------------------------------------


async def test_two_workers_on_one_store_create_each_shard_once(start_vertex: StartVertex, tmp_path: Path) -> None:
    n = 20
    emu = await start_vertex(batch_latency=Latency("fixed", 3.0), batch_output_files=2)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    m = vmanifest(tmp_path / "two.yaml", n, shard=4, top={"provider": "vertex", "route": "batch"})
    imported = await batcher("import", str(m), "--db", str(db), env=env, cwd=tmp_path)
    assert imported.code == 0, imported.err
    first = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
    second = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
    for done in (await finish(first, 120.0), await finish(second, 120.0)):
        assert done.code == 0 and "Traceback" not in done.err, done.err
    report = await batcher("report", "two", "--db", str(db), "--format", "json", env=env, cwd=tmp_path)
    doc = json.loads(report.out)
    head = doc.get("summary", doc)
    assert head["succeeded"] == n, head
    assert set(emu.stats.jobs_by_display_name.values()) == {1}, emu.stats.jobs_by_display_name
    money_is_the_apis(head, emu, db)


async def test_a_worker_frozen_mid_collection_past_its_lease_then_woken_writes_nothing_twice(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 6
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=3, image_bytes=3_000_000)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path, BATCHER_LEASE_S="2")
    m = vmanifest(tmp_path / "frozen.yaml", n, shard=6, top={"provider": "vertex", "route": "batch"})
    assert (await batcher("import", str(m), "--db", str(db), env=env, cwd=tmp_path)).code == 0
    out = tmp_path / "out" / "frozen"
    first = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
    await until(lambda: images(out) >= 1 or first.returncode is not None, "the first image to be written")
    await freeze_outside_a_write(first, db)
    try:
        assert images(out) < n, "every line was read before the freeze"
        second = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
        other = await finish(second, 90.0)
    finally:
        first.send_signal(signal.SIGCONT)
    woken = await finish(first, 90.0)
    for done in (woken, other):
        assert done.code == 0 and "Traceback" not in done.err, done.err
    report = await batcher("report", "frozen", "--db", str(db), "--format", "json", env=env, cwd=tmp_path)
    doc = json.loads(report.out)
    head = doc.get("summary", doc)
    assert emu.stats.jobs_created == 1 and head["succeeded"] == n, head
    money_is_the_apis(head, emu, db)


async def test_no_more_jobs_at_once_than_vertex_allows_while_shards_wait(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 12  # six shards of two, four jobs at once at most (the client's limits)
    emu = await start_vertex(batch_latency=Latency("fixed", 4.0))
    m = vmanifest(tmp_path / "capped.yaml", n, shard=2)
    db = tmp_path / "b.db"
    done = await run(m, db, env_of(emu, tmp_path), tmp_path)
    assert done.code == 0, done.err
    head = head_of(done)
    jobs = list(emu.state.jobs.values())
    assert len(jobs) == 6 and head["succeeded"] == n
    # at each create, the jobs made before it that had not finished by then: never past the cap
    for job in jobs:
        running = [j for j in jobs if j.created_at < job.created_at and j.finishes_at > job.created_at]
        assert len(running) < 4, [(j.created_at, j.finishes_at) for j in jobs]
    money_is_the_apis(head, emu, db)


async def test_a_job_deleted_after_it_ended_and_a_kill_mid_collection_collects_the_rest_from_its_output(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    """The worker is killed while it reads an ended job's output; the job is then deleted at the API. Its output
    stays in Cloud Storage: the next run collects the lines it had not settled, none paid and lost, none sent
    again."""
    n = 6
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=3, image_bytes=3_000_000)
    m = vmanifest(tmp_path / "deletedmid.yaml", n, shard=6)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    out = tmp_path / "out" / "deletedmid"
    proc = await start(*cli(m, db), env=env, cwd=tmp_path)
    await until(lambda: images(out) >= 1 or proc.returncode is not None, "the first image to be written")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert 1 <= images(out) < n, images(out)
    next(iter(emu.state.jobs.values())).deleted = True  # batchPredictionJobs.delete: the job goes, its files stay
    done = await run(m, db, env, tmp_path)
    assert done.code == 0, done.err
    head = head_of(done)
    assert head["succeeded"] == n and head["paid_result_lost"] == 0 and emu.stats.jobs_created == 1, head
    money_is_the_apis(head, emu, db)
    assert images(out) == n and staged_objects(emu) == []


@pytest.mark.postgres
async def test_two_workers_on_one_postgresql_store_create_each_shard_once(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    admin = os.environ.get("BATCHER_TEST_PG_URL")
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("BATCHER_TEST_PG_URL is not set: .ci/run must start PostgreSQL and export it")
        pytest.skip("no PostgreSQL server configured (set BATCHER_TEST_PG_URL)")
    import asyncpg

    n = 20
    emu = await start_vertex(batch_latency=Latency("fixed", 3.0), batch_output_files=2)
    env = env_of(emu, tmp_path)
    fresh = FreshDatabase(admin)
    await asyncio.to_thread(fresh.__enter__)
    try:
        db = fresh.url
        m = vmanifest(tmp_path / "twopg.yaml", n, shard=4, top={"provider": "vertex", "route": "batch"})
        imported = await batcher("import", str(m), "--db", db, env=env, cwd=tmp_path)
        assert imported.code == 0, imported.err
        first = await start("work", "--db", db, "-q", env=env, cwd=tmp_path)
        second = await start("work", "--db", db, "-q", env=env, cwd=tmp_path)
        for done in (await finish(first, 120.0), await finish(second, 120.0)):
            assert done.code == 0 and "Traceback" not in done.err, done.err
        report = await batcher("report", "twopg", "--db", db, "--format", "json", env=env, cwd=tmp_path)
        doc = json.loads(report.out)
        head = doc.get("summary", doc)
        conn = await asyncpg.connect(db.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            billed = [r["key"] for r in await conn.fetch("SELECT key FROM tasks WHERE cost_micros > 0")]
            strays = await conn.fetchval("SELECT count(*) FROM strays WHERE cost_micros > 0")
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(fresh.__exit__, None, None, None)
    assert head["succeeded"] == n and strays == 0, head
    assert set(emu.stats.jobs_by_display_name.values()) == {1}, emu.stats.jobs_by_display_name
    assert {str(k): 1 for k in billed} == emu.stats.batch_rows_by_key
    assert head["billed_calls"] == emu.stats.batch_rows_billed == n
    assert head["cost_usd"] == usd(emu.stats.batch_rows_billed * LINE_PRICE), head
