"""Attacks on Batch Mode's money truth over the real CLI: sequences of kills, cancels, lost files and late
replies around a shard's life that the other batch tests do not play. Each holds the ledger against the
emulator's own billing, per key: what the API billed for a key is what the ledger bills for it, or the
difference is one the summary flags."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path

import aiohttp

from batcher.emulator import Latency
from batcher.emulator.gemini.server import GeminiEmulator
from tests.acceptance.cli_kit import batcher, finish, freeze_outside_a_write, start
from tests.acceptance.test_batch_money_truth import (
    HOURS_49,
    images_are_the_apis,
    ledger_by_key,
    money_is_the_apis,
    run,
)
from tests.acceptance.test_gemini_batch import QUICK, batch_manifest, cli, pngs
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import until
from tests.conftest import StartGemini


def shard_batch(db: Path) -> str | None:
    """The batch the job's one shard records as its own."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT remote_name FROM submissions").fetchone()
    return None if row is None else row[0]


async def killed_at_the_first_image(proc: asyncio.subprocess.Process, out: Path, n: int) -> None:
    """SIGKILL the run once it has written its first image of the results file, before the last."""
    await until(lambda: pngs(out) >= 1 or proc.returncode is not None, "the first image to be written")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert 1 <= pngs(out) < n, f"{pngs(out)} images were written before the kill"


async def delete_batch(emu: GeminiEmulator, name: str) -> None:
    """batches.delete over HTTP, as a user of the account would: it hides the batch, it does not cancel it."""
    async with aiohttp.ClientSession() as http:
        gone = await http.delete(f"{emu.origin}/v1beta/{name}", headers={"x-goog-api-key": emu.api_key})
        assert gone.status == 200, await gone.text()


def nothing_unflagged(emu: GeminiEmulator, db: Path) -> None:
    """What the ledger lacks of the API's billing, key by key, is counted as unknown submissions of that key."""
    flagged = {r["key"]: r["unknown_count"] for r in rows(db)}
    ledger = ledger_by_key(db)
    for key, billed in emu.stats.batch_lines_by_key.items():
        assert billed - ledger.get(key, 0) <= flagged[key], (key, billed, ledger, flagged, emu.stats.state_by_batch)


async def a_create_in_doubt(
    start_gemini: StartGemini, tmp_path: Path, job: str
) -> tuple[GeminiEmulator, Path, Path, asyncio.subprocess.Process]:
    """A run of one shard whose create made its batch but was answered by a gateway's 502/504, with a listing
    that lags 30 s behind a create, far past the shard's 1 s grace period. Returns once the gateway answered."""
    emu = await start_gemini(batch_latency=Latency("fixed", 5.0), batch_create_gateway_rate=1.0,
                             batch_list_lag_s=30.0, seed=4)  # fmt: skip
    m = batch_manifest(tmp_path / f"{job}.yaml", 5, batch={"max_requests": 5, "create_grace_s": 1})
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batch_create_gateway_errors >= 1, "the first create to be answered by a gateway")
    emu.configure(batch_create_gateway_rate=0.0)
    return emu, m, db, proc


async def test_a_kill_mid_file_after_failed_lines_then_the_file_expires_counts_the_rest_paid_result_lost(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """A shard's results file is read in part (its failed lines, then an image) when the worker is killed; the
    file is gone (48 hours) before the next run. The lines read before the kill include failed ones the API
    does not count as succeeded: the billed lines left are paid, result lost, never sent again unflagged."""
    n = 5
    # seed 88 draws the first shard's lines failed, failed, image, image, image (the file's order)
    emu = await start_gemini(batch_latency=QUICK, batch_line_fail_rate=0.4, image_bytes=3_000_000, seed=88)
    m = batch_manifest(tmp_path / "midfile.yaml", n)
    db = tmp_path / "b.db"
    out = tmp_path / "out" / "midfile"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= 1, "the shard to be created")
    emu.configure(batch_line_fail_rate=0.0)  # the failed lines' later shard succeeds
    first = next(iter(emu.state.batches.values()))
    assert [line.fate for line in first.lines] == ["failed", "failed", "image", "image", "image"]
    await killed_at_the_first_image(proc, out, 3)
    emu.advance(HOURS_49)  # the results file has expired before the next run collects the rest
    done = await run(m, db, emu, tmp_path, timeout=60.0)
    assert done.out, done.err
    head = json.loads(done.out)
    images = {line.key for line in first.lines if line.fate == "image"}
    by_key = {r["key"]: r for r in rows(db)}
    lost = {k for k in images if by_key[k]["status"] != "succeeded"}
    assert lost and {by_key[k]["failure"] for k in lost} == {"result_lost"}, (by_key, done.err)
    assert head["paid_result_lost"] == len(lost), (head, done.err)
    assert emu.stats.batches_created == 2, emu.stats.batch_lines_by_key  # no billed line sent again
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n - len(lost)
    assert done.code == 1, done.err


async def test_a_batch_deleted_at_the_api_while_it_runs_sends_its_tasks_again_counted_as_unknown(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """Someone deletes a running batch (batches.delete: it hides the batch, it does not cancel it): it goes on
    and bills, but the API no longer answers for it. Its tasks go again, each counted as an unknown submission
    (a possible double charge), never silently."""
    n = 5
    emu = await start_gemini(batch_latency=Latency("fixed", 30.0), seed=1)
    m = batch_manifest(tmp_path / "deleted.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= 1, "the shard to be created")
    first = next(iter(emu.state.batches))
    await delete_batch(emu, first)
    emu.configure(batch_latency=QUICK)  # the tasks sent again are done at once
    emu.advance(30.0)  # the deleted batch ends and bills all the same
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    stats = emu.stats
    assert stats.batch_lines_by_batch[first] == n and stats.batch_lines_billed == 2 * n, stats.batch_lines_by_batch
    assert head["succeeded"] == n and images_are_the_apis(db, emu) == n
    nothing_unflagged(emu, db)
    assert head["unknown_submissions"] >= n, head


async def test_cancel_while_a_create_is_in_doubt_past_the_grace_period_leaves_no_batch_unflagged(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """A create made its batch but a gateway answered 502/504, and the listing lags past the grace period;
    `batcher cancel` finds no batch of the shard and marks it; the worker, absent on every listing, closes the
    shard as never created and sends its tasks again. The first batch shows up late and bills: its lines are
    collected as known duplicates or flagged, never paid twice silently."""
    n = 5
    emu, m, db, proc = await a_create_in_doubt(start_gemini, tmp_path, "doubt")
    cancelled = await batcher("cancel", "doubt", "--db", str(db), env=gemini_env(emu), cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    done = await finish(proc, 90.0)
    assert "Traceback" not in done.err + cancelled.err, done.err
    assert "may be on its way" in cancelled.err and "no batch of it on the listing" in done.err, done.err
    emu.advance(3600.0)  # the first batch has ended, billed, and shows on the listing
    again = await run(m, db, emu, tmp_path, timeout=60.0)  # a later run finds and collects whatever is left
    assert again.code == 0, again.err
    head = json.loads(again.out)
    assert head["succeeded"] == n and images_are_the_apis(db, emu) == n
    nothing_unflagged(emu, db)


async def test_a_kill_after_a_shard_was_created_again_still_finds_its_late_first_batch(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """A create answered by a gateway, a listing lagging past the grace period: the shard is created again.
    The worker is killed before it collects; a later run collects the shard. The first batch, billed, shows on
    the listing by then: its lines are known duplicates in the ledger, never unflagged."""
    n = 5
    emu, m, db, proc = await a_create_in_doubt(start_gemini, tmp_path, "again")
    await until(lambda: emu.stats.batches_created >= 2, "the shard to be created again past the grace period")
    second = list(emu.state.batches)[1]
    await until(lambda: shard_batch(db) == second, "the second batch's name to be recorded")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    emu.advance(3600.0)  # both batches have ended and billed; the listing shows both
    done = await run(m, db, emu, tmp_path, timeout=60.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert emu.stats.batches_created == 2 and emu.stats.batch_lines_billed == 2 * n
    assert head["succeeded"] == n and head["known_duplicates"] == n, (head, done.err)
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n


async def test_a_worker_frozen_mid_file_past_its_lease_then_woken_writes_nothing_twice(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """Two `work` processes; the one collecting a shard is frozen (SIGSTOP) mid-file past its 2 s lease; the
    other takes the shard over and collects it; the first is woken (SIGCONT) and goes on reading. Each line is
    settled once: ledger == billed, key by key, every image byte-exact, nothing created again."""
    n = 5
    emu = await start_gemini(batch_latency=QUICK, image_bytes=3_000_000)
    db = tmp_path / "b.db"
    env = gemini_env(emu, BATCHER_LEASE_S="2")
    m = batch_manifest(tmp_path / "midlease.yaml", n, provider="gemini", route="batch")
    assert (await batcher("import", str(m), "--db", str(db), env=env, cwd=tmp_path)).code == 0
    out = tmp_path / "out" / "midlease"
    first = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
    await until(lambda: pngs(out) >= 1 or first.returncode is not None, "the first image to be written")
    await freeze_outside_a_write(first, db)
    try:
        assert pngs(out) < n, "the whole file was read before the freeze"
        second = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
        other = await finish(second, 90.0)
    finally:
        first.send_signal(signal.SIGCONT)
    woken = await finish(first, 90.0)
    for done in (woken, other):
        assert done.code == 0 and "Traceback" not in done.err, done.err
    report = await batcher("report", "midlease", "--db", str(db), "--format", "json", env=env, cwd=tmp_path)
    doc = json.loads(report.out)
    head = doc.get("summary", doc)
    assert emu.stats.batches_created == 1 and head["succeeded"] == n, head
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n


async def test_a_batch_deleted_after_it_ended_and_a_kill_mid_file_counts_the_rest_paid_result_lost(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """The worker is killed while it reads a succeeded batch's results; the batch is then deleted at the API
    (its results with it). The next run cannot look the batch up again: the lines it had not settled were billed
    (the batch's counts, as recorded), so they are paid, result lost; the run ends, it does not retry forever."""
    n = 5
    emu = await start_gemini(batch_latency=QUICK, image_bytes=3_000_000)
    m = batch_manifest(tmp_path / "deletedafter.yaml", n)
    db = tmp_path / "b.db"
    out = tmp_path / "out" / "deletedafter"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await killed_at_the_first_image(proc, out, n)
    await delete_batch(emu, next(iter(emu.state.batches)))
    emu.advance(HOURS_49)  # and its results file has expired
    done = await run(m, db, emu, tmp_path, timeout=40.0)
    assert done.out, done.err
    head = json.loads(done.out)
    lost = {r["key"] for r in rows(db) if r["status"] != "succeeded"}
    assert lost and {r["failure"] for r in rows(db) if r["key"] in lost} == {"result_lost"}, done.err
    assert head["paid_result_lost"] == len(lost) and emu.stats.batches_created == 1, head
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n - len(lost)
    assert done.code == 1, done.err
