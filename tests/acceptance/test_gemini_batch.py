"""The real CLI by Gemini Batch Mode (`--route batch`), against the Gemini emulator over loopback HTTP. Money is
checked against what the emulator billed (its batch lines, by key), never the ledger alone.

A batch is first looked at 10 s after it is created, so each test waits at least that long for its results."""

from __future__ import annotations

import hashlib
import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Latency
from batcher.emulator.gemini.server import GeminiEmulator
from batcher.errors import BatcherError
from batcher.imageinfo import sniff
from batcher.manifest.loader import load_manifest
from tests.acceptance.cli_kit import Done, batcher, finish, manifest, start
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import report_of, until
from tests.conftest import StartGemini

LINE_PRICE = 0.0335  # half the online price of gemini-3.1-flash-lite-image
ONLINE_PRICE = 0.067
QUICK = Latency("fixed", 1.0)  # a batch done a second after it is created
FAST = Latency("uniform", 0.05, 0.2)
SHARD = 5
SUCCEEDED, CANCELLED = "BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED"


def _shard_size_supported() -> bool:
    """Whether the manifest takes `batch: {max_requests: N}` (another branch adds it); without it, one shard."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            load_manifest(str(manifest(Path(d) / "probe.yaml", 1, batch={"max_requests": SHARD})))
        except BatcherError:
            return False
    return True


SHARDED = _shard_size_supported()


def batch_manifest(path: Path, n: int, **top: Any) -> Path:
    """A manifest of n tasks, cut into shards of SHARD requests when the manifest can say so."""
    if SHARDED:
        top.setdefault("batch", {"max_requests": SHARD})
    return manifest(path, n, **top)


def shards_for(n: int) -> int:
    return math.ceil(n / SHARD) if SHARDED else 1


def cli(m: Path, db: Path, *more: str) -> tuple[str, ...]:
    return ("run", str(m), "--db", str(db), "--provider", "gemini", "--route", "batch", "-q", "--json", *more)


async def run(m: Path, db: Path, emu: GeminiEmulator, cwd: Path, *more: str) -> Done:
    return await batcher(*cli(m, db, *more), env=gemini_env(emu), cwd=cwd, timeout=90.0)


def usd(amount: float) -> str:
    return str(round(amount, 6)).rstrip("0").rstrip(".") if amount else "0"


def keys_of(db: Path) -> set[str]:
    return {str(r["key"]) for r in rows(db)}


def billed_once_each(emu: GeminiEmulator, keys: set[str]) -> None:
    """Each of `keys` billed exactly once by the API, and nothing else billed."""
    by_key = emu.stats.batch_lines_by_key
    assert by_key == dict.fromkeys(keys, 1), {k: n for k, n in by_key.items() if n != 1 or k not in keys}


def ledger_is_the_api(head: dict[str, Any], emu: GeminiEmulator) -> None:
    """The ledger's billed calls and cost are the emulator's billed lines at the batch price (plus any online)."""
    stats = emu.stats
    assert head["billed_calls"] == stats.batch_lines_billed + stats.images_billed, (head, stats)
    assert head["cost_usd"] == usd(stats.batch_lines_billed * LINE_PRICE + stats.images_billed * ONLINE_PRICE), head


def one_batch_per_shard(emu: GeminiEmulator, shards: int) -> None:
    stats = emu.stats
    assert stats.batches_created == shards, stats.batches_by_display_name
    assert len(stats.batches_by_display_name) == shards and set(stats.batches_by_display_name.values()) == {1}


def batch_keys(emu: GeminiEmulator) -> list[list[str]]:
    """Each batch's line keys, in the order they were created."""
    return [[line.key for line in b.lines] for b in emu.state.batches.values()]


def pngs(out: Path) -> int:
    return len(list(out.glob("*.png"))) if out.exists() else 0


# --- 1. a clean run ----------------------------------------------------------------------------------------


async def test_a_clean_batch_run_bills_each_line_once_and_cleans_up(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 20
    emu = await start_gemini(batch_latency=QUICK, image_bytes=50_000)
    m = batch_manifest(tmp_path / "clean.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    shards = shards_for(n)
    assert head["succeeded"] == n and head["failed"] == 0
    one_batch_per_shard(emu, shards)
    assert emu.stats.batch_lines_billed == n and emu.stats.images_billed == 0
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    assert head["cost_usd"] == usd(n * LINE_PRICE)
    for r in rows(db):
        data = Path(r["output_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        assert sniff(data) is not None and r["image_format"] == "png" and r["status"] == "succeeded"
    assert emu.stats.files_uploaded == shards
    assert emu.stats.files_deleted == 2 * shards  # each input file and each results file
    assert not list((tmp_path / "out" / "clean" / ".batcher-shards").glob("*.jsonl"))
    calls = head["api_calls"]
    assert calls["batch_create"] == shards and calls["upload"] == shards, calls


async def test_a_big_batch_costs_far_fewer_calls_than_images(start_gemini: StartGemini, tmp_path: Path) -> None:
    """A shard costs about six calls (upload, create, a get, the download, two deletes), whatever its size."""
    n = 200
    emu = await start_gemini(batch_latency=QUICK)
    m = manifest(tmp_path / "big.yaml", n)  # the default shard size (100)
    done = await run(m, tmp_path / "b.db", emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n == emu.stats.batch_lines_billed
    assert head["calls_per_image"] < 0.1, head["api_calls"]
    ledger_is_the_api(head, emu)


# --- 2. a lost create reply --------------------------------------------------------------------------------


async def test_a_lost_create_reply_is_reconciled_by_listing(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK, batch_create_lost_rate=1.0)
    m = batch_manifest(tmp_path / "lost.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    one_batch_per_shard(emu, shards_for(n))
    assert head["api_calls"].get("batch_list", 0) >= shards_for(n), head["api_calls"]
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


# --- 3. kill -9 while the create's reply is on its way -----------------------------------------------------


async def test_a_kill_while_the_create_waits_then_resume_adopts_the_batch(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK, batch_create_delay_s=120.0)
    m = batch_manifest(tmp_path / "killcreate.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= 1, "the first create to reach the API")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert emu.stats.batches_created == 1
    emu.configure(batch_create_delay_s=0.0)
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    one_batch_per_shard(emu, shards_for(n))
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


# --- 4. kill -9 during the upload, and while collecting ----------------------------------------------------


async def test_a_kill_during_the_upload_then_resume_creates_each_shard_once(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK, upload_finalize_delay_s=120.0)
    m = batch_manifest(tmp_path / "killupload.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.count("upload", 200) >= 1, "the first upload to start")
    await until(lambda: emu.clock.sleepers >= 1, "its bytes to be sent and the finalize to wait")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert emu.stats.batches_created == 0
    emu.configure(upload_finalize_delay_s=0.0)
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    one_batch_per_shard(emu, shards_for(n))
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


async def test_a_kill_while_collecting_then_resume_bills_nothing_twice(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 20
    emu = await start_gemini(batch_latency=QUICK, image_bytes=400_000)
    m = batch_manifest(tmp_path / "killcollect.yaml", n)
    db = tmp_path / "b.db"
    out = tmp_path / "out" / "killcollect"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: pngs(out) >= 1 or proc.returncode is not None, "the first image to be written")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    written = pngs(out)
    assert 1 <= written < n, f"{written} images were written before the kill"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n and pngs(out) == n
    one_batch_per_shard(emu, shards_for(n))
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    for r in rows(db):
        assert hashlib.sha256(Path(r["output_path"]).read_bytes()).hexdigest() == r["sha256"]


# --- 5. failed lines and an expired batch go again, and only they -------------------------------------------


async def test_failed_lines_alone_go_in_a_later_shard(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK, batch_line_fail_rate=0.3, seed=7)
    m = batch_manifest(tmp_path / "faillines.yaml", n)
    db = tmp_path / "b.db"
    first = shards_for(n)
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= first, "the first shards to be created")
    emu.configure(batch_line_fail_rate=0.0)  # the later shards' lines all succeed
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    batches = list(emu.state.batches.values())
    failed = {line.key for b in batches[:first] for line in b.lines if line.fate == "failed"}
    assert failed, "the seed drew no failed line"
    assert {k for keys in batch_keys(emu)[first:] for k in keys} == failed
    assert sum(len(keys) for keys in batch_keys(emu)[first:]) == len(failed)  # each once
    assert head["succeeded"] == n
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


async def test_an_expired_batch_sends_its_tasks_again_once(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 5
    emu = await start_gemini(batch_latency=Latency("fixed", 60.0), batch_expiry_s=3.0)
    m = batch_manifest(tmp_path / "expired.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.batches_by_state.get("BATCH_STATE_EXPIRED", 0) >= 1, "the first batch to expire")
    emu.configure(batch_latency=QUICK, batch_expiry_s=48 * 3600.0)
    done = await finish(proc, 90.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert emu.stats.batches_by_state == {"BATCH_STATE_EXPIRED": 1, SUCCEEDED: 1}
    first, again = batch_keys(emu)
    assert sorted(first) == sorted(again) and len(again) == n
    assert head["succeeded"] == n
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


# --- 6. refusals ------------------------------------------------------------------------------------------


async def test_refused_lines_fail_blocked_unbilled_and_are_not_sent_again(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK, batch_line_refusal_rate=0.3, seed=5)
    m = batch_manifest(tmp_path / "refused.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 1, done.err
    head = json.loads(done.out)
    refused = emu.stats.batch_lines_refused
    assert refused > 0, "the seed drew no refusal"
    assert head["blocked"] == refused == head["failed"] and head["succeeded"] == n - refused
    one_batch_per_shard(emu, shards_for(n))  # nothing sent again
    assert emu.stats.batch_lines_billed == n - refused
    failed = [r for r in rows(db) if r["status"] == "failed"]
    assert len(failed) == refused
    assert all(r["failure"] == "blocked" and r["cost_micros"] == 0 for r in failed), failed
    ledger_is_the_api(head, emu)
    report = (await report_of(db, tmp_path))["summary"]
    assert report["blocked"] == refused and report["billed_calls"] == n - refused


# --- 7. 503s after success ---------------------------------------------------------------------------------


async def test_unavailable_answers_after_success_are_retried_never_recreated(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK, batch_unavailable_s=12.0)
    m = batch_manifest(tmp_path / "unavailable.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert emu.stats.unavailable_answers >= 1
    assert head["succeeded"] == n
    one_batch_per_shard(emu, shards_for(n))
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


# --- 8. --no-wait ------------------------------------------------------------------------------------------


async def test_no_wait_exits_5_and_a_later_run_collects(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 10
    emu = await start_gemini(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "nowait.yaml", n)
    db = tmp_path / "b.db"
    submitted = await run(m, db, emu, tmp_path, "--no-wait")
    assert submitted.code == 5, submitted.err
    assert "collect the images with: batcher run" in submitted.err, submitted.err
    one_batch_per_shard(emu, shards_for(n))
    assert emu.stats.batch_lines_billed == 0 or emu.stats.batches_by_state  # nothing collected yet
    assert all(r["status"] != "succeeded" for r in rows(db))
    status = await batcher("status", "--db", str(db), env=gemini_env(emu), cwd=tmp_path)
    assert status.code == 0, status.err
    emu.advance(5)  # the batches are done at the API
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    one_batch_per_shard(emu, shards_for(n))  # collected, none created again
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


# --- 9. the budget ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARDED, reason="the manifest cannot set batch.max_requests yet: one shard of every task")
async def test_a_budget_of_one_shard_creates_one_batch(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "budget.yaml", 10)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, "--max-cost", "0.1675")
    assert done.code == 3, done.err
    head = json.loads(done.out)
    assert emu.stats.batches_created == 1 and emu.stats.batch_lines_billed == SHARD
    assert head["succeeded"] == SHARD and head["cost_usd"] == "0.1675"
    ledger_is_the_api(head, emu)


async def test_a_budget_below_a_shard_creates_only_the_lines_that_fit(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "tight.yaml", 10)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, "--max-cost", "0.1")  # less than a whole shard's price: 2 lines fit
    assert done.code == 3, done.err
    head = json.loads(done.out)
    assert emu.stats.batches_created == 1 and emu.stats.batch_lines_billed == 2, emu.stats.batches_by_display_name
    assert head["billed_calls"] == 2 and head["cost_usd"] == usd(2 * LINE_PRICE) and head["pending"] == 8, head
    ledger_is_the_api(head, emu)


# --- 10. the deadline -------------------------------------------------------------------------------------


async def test_past_the_deadline_the_batches_are_cancelled_and_finished_online(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 10
    emu = await start_gemini(batch_latency=Latency("fixed", 600.0), latency=FAST)
    m = batch_manifest(tmp_path / "deadline.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, "--finish-online-after", "12s")
    assert done.code == 0, done.err
    head = json.loads(done.out)
    shards = shards_for(n)
    assert emu.stats.batches_created == shards
    assert emu.stats.batches_by_state == {CANCELLED: shards}
    assert emu.stats.batch_lines_billed == 0 and emu.stats.images_billed == n
    assert head["succeeded"] == n
    assert emu.stats.billed_by_prompt == {f"Catalog photo number {i}": 1 for i in range(n)}
    ledger_is_the_api(head, emu)


async def test_a_batch_done_between_checks_at_the_deadline_is_collected_not_paid_again_online(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """Checks at 10 s and 20 s find it running; it is done at 22 s; the deadline at 30 s comes before the
    check at 40 s. Its cancel is refused (already ended): its lines are billed, so they are collected, never
    run online again."""
    n = 5
    emu = await start_gemini(batch_latency=Latency("fixed", 22.0), latency=FAST)
    m = batch_manifest(tmp_path / "between.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, "--finish-online-after", "30s")
    assert emu.stats.batches_by_state == {SUCCEEDED: shards_for(n)}
    assert emu.stats.batch_lines_billed == n
    assert emu.stats.images_billed == 0, f"{emu.stats.images_billed} images paid again online"
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


async def test_no_wait_creates_a_shard_for_every_pending_task(start_gemini: StartGemini, tmp_path: Path) -> None:
    """More tasks than one planning pass claims (four shards' worth): --no-wait still sends them all."""
    shard = SHARD if SHARDED else 100
    n = 4 * shard + 2
    emu = await start_gemini(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "many.yaml", n)
    db = tmp_path / "b.db"
    submitted = await run(m, db, emu, tmp_path, "--no-wait")
    assert submitted.code == 5, submitted.err
    statuses = [r["status"] for r in rows(db)]
    assert statuses.count("pending") == 0, f"{statuses.count('pending')} of {n} tasks were never sent"
    assert sum(len(keys) for keys in batch_keys(emu)) == n


async def test_each_model_gets_its_own_batch(start_gemini: StartGemini, tmp_path: Path) -> None:
    """A batch runs on the one model its create names: tasks of two models never share a shard."""
    emu = await start_gemini(batch_latency=QUICK)
    lite, flash = "gemini-3.1-flash-lite-image", "gemini-3.1-flash-image"
    m = tmp_path / "models.yaml"
    tasks = [{"prompt": f"Catalog photo number {i}", "i": str(i), "model": lite if i % 2 else flash} for i in range(6)]
    m.write_text(json.dumps({"job": "models", "output": {"dir": str(tmp_path / "out" / "models"),
                                                         "filename": "{i}.png"}, "tasks": tasks}),
                 encoding="utf-8")  # fmt: skip
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path, "--price", "0.03")
    assert done.code == 0, done.err
    assert emu.stats.batch_lines_by_model == {lite: 3, flash: 3}, emu.stats.batch_lines_by_model
    assert emu.stats.batches_created == 2
    billed_once_each(emu, keys_of(db))


async def test_a_batch_that_always_fails_stops_after_max_attempts(start_gemini: StartGemini, tmp_path: Path) -> None:
    """A FAILED batch sends its tasks again, but not forever: after --max-attempts batches they fail, unbilled."""
    n = 3
    emu = await start_gemini(batch_latency=QUICK, batch_fail_rate=1.0)
    m = batch_manifest(tmp_path / "alwaysfails.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db, "--max-attempts", "2"), env=gemini_env(emu), cwd=tmp_path)
    try:
        done = await finish(proc, 40.0)
    except TimeoutError:
        proc.kill()
        await finish(proc)
        raise AssertionError(f"still running after 40 s, {emu.stats.batches_created} FAILED batches created") from None
    assert done.code == 1, done.err
    head = json.loads(done.out)
    assert head["failed"] == n and head["billed_calls"] == 0 and emu.stats.batch_lines_billed == 0
    assert emu.stats.batches_created == 2 * shards_for(n)
    assert all(r["failure"] == "generation" and r["cost_micros"] == 0 for r in rows(db))


async def test_an_input_file_gone_before_the_create_is_uploaded_again(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """The create answers 503 (nothing made); by the time the listing proves it and the create goes again, the
    API has dropped the uploaded file (48 h in the field, 2 s here). The tasks are not the API's fault: the
    shard is uploaded again, never failed as refused."""
    n = 4
    emu = await start_gemini(batch_latency=QUICK, batch_create_503_rate=1.0, file_ttl_s=2.0)
    # a short grace period: the listing's proof comes after the 2 s the file lives
    m = batch_manifest(tmp_path / "filegone.yaml", n, batch={"max_requests": SHARD, "create_grace_s": 1})
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=gemini_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.count("batch", 503) >= 1, "the first create to answer 503")
    emu.configure(batch_create_503_rate=0.0, file_ttl_s=48 * 3600.0)
    done = await finish(proc, 60.0)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n and head["failed"] == 0, [r["last_error"] for r in rows(db)]
    one_batch_per_shard(emu, shards_for(n))
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)


# --- chains and cancelling ---------------------------------------------------------------------------------


async def test_a_chain_goes_one_generation_per_shard(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(batch_latency=QUICK)
    m = tmp_path / "chain.yaml"
    m.write_text(
        "job: chain\noutput:\n  dir: out\n"
        "tasks:\n  - name: base\n    prompt: a red mug\n    filename: base.png\n"
        "  - name: blue\n    from: base\n    prompt: the same mug, in blue\n    filename: blue.png\n"
        "  - from: blue\n    prompt: the blue mug on a shelf\n    filename: shelf.png\n",
        encoding="utf-8",
    )
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 0, done.err
    by_prompt = {r["prompt"]: r for r in rows(db)}
    # each generation of the chain rode in its own batch, after its parent's image was collected
    assert [[by_prompt_key(by_prompt, k) for k in keys] for keys in batch_keys(emu)] == [
        ["a red mug"],
        ["the same mug, in blue"],
        ["the blue mug on a shelf"],
    ]
    # the two edits carried their parent's image inline
    specs = [line.spec for b in emu.state.batches.values() for line in b.lines]
    assert [s.input_images if s is not None else None for s in specs] == [0, 1, 1]
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(json.loads(done.out), emu)


def by_prompt_key(by_prompt: dict[str, dict[str, Any]], key: str) -> str:
    return next(p for p, r in by_prompt.items() if r["key"] == key)


async def test_cancel_stops_the_jobs_batches_and_sends_its_tasks_back(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    n = 6
    emu = await start_gemini(batch_latency=Latency("fixed", 600.0))
    m = batch_manifest(tmp_path / "cancel.yaml", n)
    db = tmp_path / "b.db"
    submitted = await run(m, db, emu, tmp_path, "--no-wait")
    assert submitted.code == 5, submitted.err
    cancelled = await batcher("cancel", "cancel", "--db", str(db), env=gemini_env(emu), cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    assert f"cancelled {shards_for(n)} batch shard" in cancelled.err, cancelled.err
    assert emu.stats.batches_by_state.get(CANCELLED) == shards_for(n), emu.stats.batches_by_state
    got = rows(db)
    assert {r["status"] for r in got} == {"pending"} and all(r["reserved_micros"] == 0 for r in got)
    assert emu.stats.batch_lines_billed == 0
    # nothing is left of a closed shard: its uploaded requests file is deleted
    assert emu.stats.files_deleted == emu.stats.files_uploaded == shards_for(n), emu.stats


async def test_work_drives_a_batch_job_by_batch_never_online(start_gemini: StartGemini, tmp_path: Path) -> None:
    n = 4
    emu = await start_gemini(batch_latency=QUICK, latency=FAST)
    m = batch_manifest(tmp_path / "worked.yaml", n, provider="gemini", route="batch")
    db = tmp_path / "b.db"
    imported = await batcher("import", str(m), "--db", str(db), env=gemini_env(emu), cwd=tmp_path)
    assert imported.code == 0, imported.err
    done = await batcher("work", "--db", str(db), "-q", "--json", env=gemini_env(emu), cwd=tmp_path, timeout=90.0)
    assert done.code == 0, done.err
    assert emu.stats.images_billed == 0 and emu.stats.batch_lines_billed == n
    billed_once_each(emu, keys_of(db))
