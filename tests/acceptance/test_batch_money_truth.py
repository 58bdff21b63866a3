"""Batch Mode money truth over the real CLI: every batch the emulator bills is collected or counted, whatever
happens around it (a lost results file, a create answered by a gateway while the listing lags, a batch that
ends CANCELLED or FAILED with lines finished, a results file that leaves billed lines out).

Money is held against the emulator's own billing, per batch and per key: what the ledger bills for each key is
what the API billed for it, or the difference is within what the summary flags; every image the emulator
served for a key is on disk, byte-exact."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

from batcher.emulator import Latency
from batcher.emulator.gemini.server import GeminiEmulator
from batcher.imageinfo import sniff
from tests.acceptance.cli_kit import Done, batcher, cli_env, finish, freeze_outside_a_write, start
from tests.acceptance.test_gemini_batch import (
    LINE_PRICE,
    QUICK,
    SHARD,
    batch_manifest,
    cli,
    keys_of,
    one_batch_per_shard,
    shards_for,
    usd,
)
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import until
from tests.conftest import StartEmulator, StartGemini

HOURS_49 = 49 * 3600.0  # past the 48 hours a file lives


async def run(m: Path, db: Path, emu: GeminiEmulator, cwd: Path, *more: str, timeout: float = 60.0) -> Done:
    return await batcher(*cli(m, db, *more), env=gemini_env(emu), cwd=cwd, timeout=timeout)


def ledger_by_key(db: Path) -> dict[str, int]:
    """Charges the ledger holds per task key: its own cost, and each known second charge (a stray row)."""
    with sqlite3.connect(db) as conn:
        billed = conn.execute("SELECT key FROM tasks WHERE cost_micros > 0").fetchall()
        strays = conn.execute(
            "SELECT t.key FROM strays s JOIN tasks t ON t.id = s.task_id WHERE s.cost_micros > 0"
        ).fetchall()
    out: dict[str, int] = {}
    for (key,) in [*billed, *strays]:
        out[str(key)] = out.get(str(key), 0) + 1
    return out


def money_is_the_apis(head: dict[str, Any], emu: GeminiEmulator, db: Path) -> None:
    """The ledger's charges are the emulator's, in total and key by key; its cost is theirs at the batch price."""
    stats = emu.stats
    assert stats.images_billed == 0
    assert ledger_by_key(db) == stats.batch_lines_by_key, (ledger_by_key(db), stats.batch_lines_by_key)
    assert head["billed_calls"] == stats.batch_lines_billed, (head, stats.batch_lines_billed)
    assert head["cost_usd"] == usd(stats.batch_lines_billed * LINE_PRICE), head


def images_are_the_apis(db: Path, emu: GeminiEmulator) -> int:
    """Every succeeded task's file is the image the emulator served for its key, byte for byte."""
    served = emu.stats.image_sha256_by_key
    count = 0
    for r in rows(db):
        if r["status"] == "succeeded":
            data = Path(r["output_path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r["sha256"] == served[r["key"]], r["key"]
            count += 1
    return count


async def the_counter_reads_the_same_everywhere(db: Path, cwd: Path, job: str, key: str, words: str, n: int) -> None:
    """The summary's counter has the same words in the table and the HTML report as its JSON key, and the CSV's
    rows name the same failure."""
    env = gemini_env(None)
    table = await batcher("report", job, "--db", str(db), env=env, cwd=cwd)
    assert f"{words} {n}" in table.out + table.err, table.err
    page = cwd / "report.html"
    html = await batcher("report", job, "--db", str(db), "--format", "html", "-o", str(page), env=env, cwd=cwd)
    assert html.code == 0, html.err
    assert f">{words}<" in page.read_text(encoding="utf-8")
    doc = json.loads((await batcher("report", job, "--db", str(db), "--format", "json", env=env, cwd=cwd)).out)
    assert doc["summary"][key] == n if "summary" in doc else doc[key] == n, doc
    csv = await batcher("report", job, "--db", str(db), "--format", "csv", env=env, cwd=cwd)
    assert csv.out.count(key.removeprefix("paid_")) == n, csv.out


# --- 1. a results file that is gone -------------------------------------------------------------------------


async def test_a_results_file_gone_is_paid_result_lost_then_recreate_makes_them_again(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "gone.yaml", n)
    db = tmp_path / "b.db"
    submitted = await run(m, db, emu, tmp_path, "--no-wait")
    assert submitted.code == 5, submitted.err
    emu.advance(HOURS_49)  # collected after a long weekend: every batch done, its results file deleted
    done = await run(m, db, emu, tmp_path, timeout=40.0)
    assert done.code == 1, done.err
    head = json.loads(done.out)
    assert emu.stats.batch_lines_billed == n and emu.stats.expired_file_answers >= shards_for(n)
    assert head["paid_result_lost"] == n and head["succeeded"] == 0, head
    assert "results file" in done.err and "retry --recreate" in done.err, done.err
    money_is_the_apis(head, emu, db)
    await the_counter_reads_the_same_everywhere(db, tmp_path, "gone", "paid_result_lost", "paid, result lost", n)
    # made again only when asked, each a known second charge
    again = await batcher("retry", "gone", "--db", str(db), "--recreate", env=gemini_env(emu), cwd=tmp_path)
    assert again.code == 0, again.err
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n and head["known_duplicates"] == n and emu.stats.batch_lines_billed == 2 * n
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n


# --- 2. a create answered by a gateway, a listing that lags ---------------------------------------------------


async def test_a_gateway_error_on_create_with_a_lagging_listing_makes_one_batch_per_shard(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    # every create makes its batch, then a gateway answers 502/504; the listing shows a batch 8 s after
    emu = await start_gemini(batch_latency=QUICK, batch_create_gateway_rate=1.0, batch_list_lag_s=8.0, seed=3)
    m = batch_manifest(tmp_path / "gateway.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, timeout=90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert emu.stats.batch_create_gateway_errors == shards_for(n)
    one_batch_per_shard(emu, shards_for(n))
    assert head["succeeded"] == n and head["known_duplicates"] == 0
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n


async def test_a_batch_absent_from_the_listing_is_created_again_only_after_the_grace_period(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 5
    emu = await start_gemini(batch_latency=QUICK, batch_create_503_rate=1.0)  # 503: nothing was made
    m = batch_manifest(tmp_path / "grace.yaml", n, batch={"max_requests": SHARD, "create_grace_s": 4})
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.count("batch", 503) >= 1, "the first create to be answered 503")
    emu.configure(batch_create_503_rate=0.0)
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    one_batch_per_shard(emu, 1)
    # absent on several complete listings, the last past the grace period, before it was sent again
    assert head["api_calls"]["batch_list"] >= 3 and head["api_calls"]["batch_create"] == 2, head["api_calls"]
    assert "4 s grace" in done.err or "over 4 s" in done.err, done.err
    money_is_the_apis(head, emu, db)


# --- 3. a batch that ends CANCELLED or FAILED keeps and bills what it finished ---------------------------------


async def test_the_deadline_collects_the_lines_a_cancelled_batch_finished_and_resends_only_the_rest(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    # The deadline runs on the real clock, and so does the emulator's besides its advances: a loaded machine may
    # take seconds to create the shards, so the deadline leaves it 20 s, and a batch runs far longer than that
    emu = await start_gemini(batch_latency=Latency("fixed", 400.0), batch_partial_lines=True, latency=QUICK, seed=11)
    m = batch_manifest(tmp_path / "deadline.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db, "--finish-online-after", "20s"), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= shards_for(n), "every shard to be created")
    emu.advance(200.0)  # half of each batch's lines have finished when the deadline cancels them
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    stats = emu.stats
    finished = stats.batch_lines_billed
    assert 0 < finished < n, finished
    assert set(stats.state_by_batch.values()) == {"BATCH_STATE_CANCELLED"}, stats.state_by_batch
    # the finished lines are collected at the batch price; only the rest ran online, each once
    assert head["succeeded"] == n and stats.images_billed == n - finished, (head, stats.images_billed)
    for r in rows(db):  # each task billed once: by its batch, or online
        assert stats.batch_lines_by_key.get(r["key"], 0) + stats.billed_by_prompt.get(r["prompt"], 0) == 1, r
    assert head["cost_usd"] == usd(finished * LINE_PRICE + (n - finished) * 2 * LINE_PRICE), head


async def test_a_failed_batch_with_finished_lines_and_no_file_counts_them_paid_result_lost(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=Latency("fixed", 4.0), batch_partial_lines=True, batch_fail_rate=1.0,
                             batch_ended_no_file_rate=1.0, seed=5)  # fmt: skip
    m = batch_manifest(tmp_path / "failed.yaml", n, retries={"max_attempts": 1})
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    head = json.loads(done.out)
    billed = emu.stats.batch_lines_billed
    assert billed > 0, "the seed drew no line finished before its batch failed"
    assert head["paid_result_lost"] == billed, head  # counted, never silently sent again
    # which lines finished cannot be known without a file: the count is the API's, the keys are not
    assert head["billed_calls"] == billed and head["cost_usd"] == usd(billed * LINE_PRICE), head
    assert done.code == 1, done.err


# --- 4. keys a results file leaves out --------------------------------------------------------------------


async def test_billed_keys_missing_from_a_results_file_are_paid_result_lost_not_resent(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 20
    emu = await start_gemini(batch_latency=QUICK, batch_omit_line_rate=0.3, batch_results_no_final_newline=True,
                             seed=9)  # fmt: skip
    m = batch_manifest(tmp_path / "omitted.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    head = json.loads(done.out)
    omitted = {k for keys in emu.stats.omitted_keys_by_batch.values() for k in keys}
    assert omitted, "the seed left no line out"
    assert emu.stats.batches_created == shards_for(n)  # nothing sent again
    assert head["paid_result_lost"] == len(omitted) and head["succeeded"] == n - len(omitted), head
    assert {r["key"] for r in rows(db) if r["failure"] == "result_lost"} == omitted
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n - len(omitted)
    assert done.code == 1, done.err
    assert keys_of(db) >= omitted


# --- 6. `batcher cancel` while a create is on its way -------------------------------------------------------


async def test_cancel_while_a_create_is_on_its_way_cancels_that_batch_and_collects_what_it_finished(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 5
    # the create makes its batch and holds its reply; the listing does not show it for an hour. The emulator's
    # clock also runs with real time: its spans are far longer than a loaded machine takes to start `cancel`
    emu = await start_gemini(batch_latency=Latency("fixed", 900.0), batch_partial_lines=True,
                             batch_create_delay_s=600.0, batch_list_lag_s=3600.0, seed=2)  # fmt: skip
    m = batch_manifest(tmp_path / "fence.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= 1, "the first create to make its batch")
    cancelled = await batcher("cancel", "fence", "--db", str(db), env=gemini_env(emu), cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    emu.configure(batch_create_delay_s=0.0, batch_latency=QUICK)  # the tasks sent again are done at once
    emu.advance(600.0)  # the held reply goes out; about two thirds of the first batch's lines have finished
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    emu.advance(3600.0)  # a batch left running would bill by now
    head = json.loads(done.out)
    stats = emu.stats
    first = next(iter(emu.state.batches))
    assert stats.state_by_batch[first] == "BATCH_STATE_CANCELLED", stats.state_by_batch
    assert len(stats.state_by_batch) == stats.batches_created  # every batch made has ended: none leaked
    assert 0 < stats.batch_lines_by_batch.get(first, 0) < n, stats.batch_lines_by_batch
    assert head["succeeded"] == n
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == n
    assert "on its way" in cancelled.err and "Traceback" not in cancelled.err + done.err, cancelled.err


# --- 5. a dead worker's shards -----------------------------------------------------------------------------


async def test_a_dead_workers_shards_are_taken_over_within_the_lease_whatever_the_survivors_load(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=Latency("fixed", 6.0))
    db = tmp_path / "b.db"
    env = gemini_env(emu, BATCHER_LEASE_S="2")
    small = batch_manifest(tmp_path / "orphans.yaml", n, provider="gemini", route="batch")
    assert (await batcher("import", str(small), "--db", str(db), env=env, cwd=tmp_path)).code == 0
    dead = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= shards_for(n), "the first worker's batches to be created")
    dead.send_signal(signal.SIGKILL)
    await finish(dead)
    # more tasks for the survivor, in batches that take ten minutes: its own load never runs out first
    emu.configure(batch_latency=Latency("fixed", 600.0))
    big = batch_manifest(tmp_path / "orphans.yaml", 2 * n, provider="gemini", route="batch")
    assert (await batcher("import", str(big), "--db", str(db), env=env, cwd=tmp_path)).code == 0
    survivor = await start("work", "--db", str(db), "-q", env=env, cwd=tmp_path)
    orphaned = {f"{i}.png" for i in range(n)}

    def collected() -> bool:
        with sqlite3.connect(db) as conn:
            done = conn.execute("SELECT filename FROM tasks WHERE status = 'succeeded'").fetchall()
        return orphaned <= {str(r[0]) for r in done}

    # its lease (2 s) plus one look for orphans, plus the batch's first poll: far below its own batches' 600 s
    await until(lambda: collected() or survivor.returncode is not None, "the dead worker's shards to be collected",
                timeout=40.0)  # fmt: skip
    assert collected()
    assert emu.stats.batches_created == 2 * shards_for(n)  # nothing created twice
    survivor.send_signal(signal.SIGINT)
    await finish(survivor)


async def test_a_shard_created_twice_collects_both_batches_and_bills_the_second_as_known_duplicates(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 5
    # a listing that lags far past the grace period: the shard is created again, then both batches show up
    emu = await start_gemini(batch_latency=QUICK, batch_create_gateway_rate=1.0, batch_list_lag_s=9.0, seed=4)
    m = batch_manifest(tmp_path / "twice.yaml", n, batch={"max_requests": SHARD, "create_grace_s": 1})
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, timeout=90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert emu.stats.batches_created == 2 and emu.stats.batch_lines_billed == 2 * n
    assert head["succeeded"] == n and head["known_duplicates"] == n, (head, done.err)
    money_is_the_apis(head, emu, db)  # both batches in the ledger, key by key
    assert images_are_the_apis(db, emu) == n
    kept = sorted((tmp_path / "out" / "twice").glob("*.dup-*.png"))
    assert len(kept) == n and all(sniff(p.read_bytes()) is not None for p in kept)


# --- 8. tasks another provider holds ---------------------------------------------------------------------


async def test_a_batch_run_leaving_tasks_another_provider_holds_exits_1_naming_them_and_work_does_not_spin(
    start_emu: StartEmulator, start_gemini: StartGemini, tmp_path: Path
) -> None:
    linkmodel = await start_emu(latency=Latency("fixed", 600.0))  # LinkModel's generations take a while
    emu = await start_gemini(batch_latency=QUICK)
    n = 6
    m = batch_manifest(tmp_path / "held.yaml", n, provider="gemini", route="batch")
    db = tmp_path / "b.db"
    env = {**cli_env(linkmodel), **gemini_env(emu)}
    proc = await start("run", str(m), "--db", str(db), "-q", "--max-in-flight", "2", "--rate", "1", "--provider",
                       "linkmodel", "--route", "online", env=env, cwd=tmp_path)  # fmt: skip
    await until(lambda: linkmodel.stats.creates_accepted == 2, "two creates to be accepted")
    await asyncio.sleep(0.3)  # their replies are committed
    proc.send_signal(signal.SIGINT)
    assert (await finish(proc)).code == 130
    done = await batcher(*cli(m, db), env=env, cwd=tmp_path, timeout=60.0)
    assert done.code == 1 and "2 by linkmodel" in done.err, done.err
    assert json.loads(done.out)["succeeded"] == n - 2 == emu.stats.batch_lines_billed
    worked = await batcher("work", "--db", str(db), "-q", env=env, cwd=tmp_path, timeout=30.0)
    assert worked.code == 1 and "2 by linkmodel" in worked.err, worked.err
    with sqlite3.connect(db) as conn:  # one turn, one worker row: it did not loop
        assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] <= 3


async def test_a_requests_file_the_api_keeps_dropping_is_uploaded_again_a_few_times_then_its_tasks_fail(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 3
    emu = await start_gemini(batch_latency=QUICK, file_ttl_s=0.0)  # every uploaded file is gone at once
    m = batch_manifest(tmp_path / "dropped.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, timeout=60.0)
    assert done.code == 1, done.err
    head = json.loads(done.out)
    assert head["failed"] == n and emu.stats.batches_created == 0 and head["cost_usd"] == "0", head
    assert emu.stats.files_uploaded == 4 * shards_for(n)  # the first upload and three more, then no more
    assert {r["failure"] for r in rows(db)} == {"transient"}


async def test_a_shard_the_budget_refuses_is_cut_to_what_fits(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "budget.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, "--max-cost", usd(7 * LINE_PRICE))  # room for 7 lines
    assert done.code == 3, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == 7 == emu.stats.batch_lines_billed, head
    money_is_the_apis(head, emu, db)


# --- 7. a worker frozen past its lease ----------------------------------------------------------------------


async def a_worker_frozen_past_its_lease(db: str, emu: GeminiEmulator, cwd: Path) -> dict[str, Any]:
    """Two `work` processes on one store; the first frozen (SIGSTOP) with a create on its way and shards
    planned, past its 2 s lease, while the second takes its shards over; then woken (SIGCONT). Returns the
    job's summary once both have ended."""
    n = 20
    env = gemini_env(emu, BATCHER_LEASE_S="2")
    m = batch_manifest(cwd / "frozen.yaml", n, provider="gemini", route="batch")
    assert (await batcher("import", str(m), "--db", db, env=env, cwd=cwd)).code == 0
    first = await start("work", "--db", db, "-q", env=env, cwd=cwd)
    await until(lambda: emu.stats.batches_created >= 1, "the first worker's first create to make its batch")
    await freeze_outside_a_write(first, db)
    try:
        second = await start("work", "--db", db, "-q", env=env, cwd=cwd)
        await until(lambda: emu.stats.batches_created >= shards_for(n) or second.returncode is not None,
                    "the second worker to create every shard")  # fmt: skip
    finally:
        first.send_signal(signal.SIGCONT)
    woken, other = await finish(first, 90.0), await finish(second, 90.0)
    for done in (woken, other):
        assert done.code == 0 and "Traceback" not in done.err, done.err
    report = await batcher("report", "frozen", "--db", db, "--format", "json", env=env, cwd=cwd)
    doc: dict[str, Any] = json.loads(report.out)
    head: dict[str, Any] = doc.get("summary", doc)
    stats = emu.stats
    assert stats.batches_created == shards_for(n), stats.batches_by_display_name  # no shard created twice
    assert set(stats.batch_lines_by_key.values()) == {1} and stats.batch_lines_billed == n
    assert len(stats.state_by_batch) == stats.batches_created  # every batch ended, and was collected:
    assert head["succeeded"] == n and head["billed_calls"] == n, head
    assert head["cost_usd"] == usd(n * LINE_PRICE)
    return head


async def test_a_worker_frozen_past_its_lease_changes_nothing_another_took_over(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(batch_latency=Latency("fixed", 3.0), batch_create_delay_s=4.0)
    db = tmp_path / "b.db"
    head = await a_worker_frozen_past_its_lease(str(db), emu, tmp_path)
    money_is_the_apis(head, emu, db)
    assert images_are_the_apis(db, emu) == 20
