"""The real CLI by Vertex AI batch prediction (`--route batch --provider vertex`), against the Vertex emulator over
loopback HTTP: google-auth's real service-account flow, the shards staged in the emulator's own Cloud Storage
(STORAGE_EMULATOR_HOST). Money is checked against what the emulator billed (its batch rows, by key), never the
ledger alone; the staging prefix is checked empty once the job is collected.

A job is first looked at 10 s after it is created, so each test waits at least that long for its results."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Latency
from batcher.emulator.vertex.server import VertexEmulator
from tests.acceptance.cli_kit import Done, batcher, cli_env, finish, manifest, start
from tests.acceptance.test_money_truth import until
from tests.acceptance.test_vertex_online import GOOGLE_VARS, rows, vertex_env
from tests.conftest import StartVertex

LINE_PRICE = 0.0335  # half the online price of gemini-3.1-flash-lite-image
QUICK = Latency("fixed", 1.0)  # a job done a second after it is created
SHARD = 5
BUCKET = "staging-bucket"
STAGING = f"gs://{BUCKET}/runs"


def env_of(emu: VertexEmulator, tmp: Path, **extra: str) -> dict[str, str]:
    """The online suite's environment, and the emulator's Cloud Storage for the staged files."""
    return {**vertex_env(emu, tmp), "STORAGE_EMULATOR_HOST": emu.origin, **extra}


def batch_manifest(path: Path, n: int, staging: str | None = STAGING, **top: Any) -> Path:
    batch: dict[str, Any] = {"max_requests": SHARD}
    if staging is not None:
        batch["staging"] = staging
    return manifest(path, n, batch=batch, **top)


def cli(m: Path, db: Path, *more: str) -> tuple[str, ...]:
    return ("run", str(m), "--db", str(db), "--provider", "vertex", "--route", "batch", "-q", "--json", *more)


async def run(m: Path, db: Path, env: dict[str, str], cwd: Path, *more: str) -> Done:
    return await batcher(*cli(m, db, *more), env=env, cwd=cwd, timeout=90.0)


def usd(amount: float) -> str:
    return str(round(amount, 6)).rstrip("0").rstrip(".") if amount else "0"


def keys_of(db: Path) -> set[str]:
    return {str(r["key"]) for r in rows(db)}


def billed_once_each(emu: VertexEmulator, keys: set[str]) -> None:
    """Each row the emulator billed is a task's, billed exactly once."""
    by_key = emu.stats.batch_rows_by_key
    assert set(by_key) <= keys and set(by_key.values()) <= {1}, {k: n for k, n in by_key.items() if n != 1}


def ledger_is_the_api(head: dict[str, Any], emu: VertexEmulator) -> None:
    """The ledger's billed calls and cost are the emulator's billed rows at the batch price."""
    stats = emu.stats
    assert head["billed_calls"] == stats.batch_rows_billed and stats.images_billed == 0, (head, stats)
    assert head["cost_usd"] == usd(stats.batch_rows_billed * LINE_PRICE), head


def one_job_per_shard(emu: VertexEmulator) -> None:
    by_name = emu.stats.jobs_by_display_name
    assert by_name and set(by_name.values()) == {1}, by_name


def staged_objects(emu: VertexEmulator, bucket: str = BUCKET) -> list[str]:
    return sorted(emu.state.store.buckets.get(bucket, {}))


async def test_several_output_files_failed_lines_and_refusals_are_each_settled_once_and_staging_cleaned(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 15
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=3, batch_line_fail_rate=0.2,
                             batch_line_refusal_rate=0.3, image_bytes=20_000, seed=5)  # fmt: skip
    m = batch_manifest(tmp_path / "mixed.yaml", n)
    db = tmp_path / "b.db"
    done = await run(m, db, env_of(emu, tmp_path), tmp_path)
    head = json.loads(done.out)
    stats = emu.stats
    assert done.code == (1 if head["failed"] else 0), done.err
    assert stats.batch_rows_refused > 0 and stats.batch_rows_failed > 0, stats  # the seed draws both
    assert head["succeeded"] + head["failed"] == n and head["pending"] == 0, head
    assert head["blocked"] == stats.batch_rows_refused  # a refusal is final, unbilled, never sent again
    assert head["succeeded"] == stats.batch_rows_billed  # every image billed was collected
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    jobs = list(emu.state.jobs.values())
    assert any(len(job.files) > 1 for job in jobs)  # the rows of one job came back in several files
    assert len(jobs) > math.ceil(n / SHARD)  # the failed lines went again, in later shards ...
    one_job_per_shard(emu)  # ... each shard one job
    assert staged_objects(emu) == []  # every staged input and every output deleted once collected
    for r in rows(db):
        if r["status"] == "succeeded":
            assert Path(r["output_path"]).is_file() and r["provider"] == "vertex"


async def test_tokens_that_expire_during_the_run_are_renewed_and_nothing_is_created_twice(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 10
    emu = await start_vertex(batch_latency=Latency("fixed", 20.0), token_lifetime_s=600)
    m = batch_manifest(tmp_path / "tokens.yaml", n)
    db = tmp_path / "b.db"
    proc = await start(*cli(m, db), env=env_of(emu, tmp_path), cwd=tmp_path)
    shards = math.ceil(n / SHARD)
    await until(lambda: emu.stats.jobs_created >= shards or proc.returncode is not None, "every shard's job")
    emu.advance(601)  # every token issued so far expires mid-run, by the service's clock; the jobs end meanwhile
    done = await finish(proc)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    stats = emu.stats
    assert stats.expired_tokens >= 1 and stats.tokens_issued >= 2, stats  # a 401, then a fresh token ...
    assert stats.unauthenticated == stats.expired_tokens  # ... and only expired tokens were ever refused
    assert head["succeeded"] == n and stats.jobs_created == shards
    one_job_per_shard(emu)
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    assert head["cost_usd"] == usd(n * LINE_PRICE) and staged_objects(emu) == []


async def test_a_kill_between_a_jobs_create_and_its_record_then_resume_adopts_the_job(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 10
    emu = await start_vertex(batch_latency=QUICK, batch_create_delay_s=120.0)
    other = "gs://cli-bucket/given"  # `--staging` over the manifest's, which names a bucket never written
    m = batch_manifest(tmp_path / "killcreate.yaml", n, staging="gs://manifest-bucket/unused")
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    proc = await start(*cli(m, db, "--staging", other), env=env, cwd=tmp_path)
    await until(lambda: emu.stats.jobs_created >= 1 or proc.returncode is not None, "the first create to arrive")
    proc.send_signal(signal.SIGKILL)  # the job is made (and will bill); its reply never reached the run
    await finish(proc)
    assert emu.stats.jobs_created >= 1
    emu.configure(batch_create_delay_s=0.0)
    done = await run(m, db, env, tmp_path, "--staging", other)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n and head["api_calls"].get("batch_list", 0) >= 1, head["api_calls"]
    assert emu.stats.jobs_created == math.ceil(n / SHARD)  # found by its display name, not created again
    one_job_per_shard(emu)
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    assert staged_objects(emu, "cli-bucket") == [] and "manifest-bucket" not in emu.state.store.buckets


@pytest.mark.parametrize("fault", ["no staging", "not a gs folder", "bad --staging", "express mode"])
async def test_a_batch_with_no_usable_staging_or_project_exits_2_before_anything_is_billed(
    start_vertex: StartVertex, tmp_path: Path, fault: str
) -> None:
    emu = await start_vertex(batch_latency=QUICK)
    m = batch_manifest(tmp_path / "staging.yaml", 3, staging=None if fault == "no staging" else STAGING)
    env = env_of(emu, tmp_path)
    more: tuple[str, ...] = ()
    expected = {"no staging": "batch: {staging: gs://BUCKET/PREFIX}", "not a gs folder": "batch.staging must be a "
                "Cloud Storage folder", "bad --staging": "--staging", "express mode": "needs a project"}[fault]  # fmt: skip
    if fault == "not a gs folder":
        m = batch_manifest(tmp_path / "staging.yaml", 3, staging="s3://some-bucket/batches")
    elif fault == "bad --staging":
        more = ("--staging", "gs://Not_A_Bucket!/x")
    elif fault == "express mode":
        env = vertex_env(emu, tmp_path, GOOGLE_CLOUD_PROJECT="", GOOGLE_APPLICATION_CREDENTIALS="",
                         GOOGLE_API_KEY=emu.api_key, STORAGE_EMULATOR_HOST=emu.origin)  # fmt: skip
    done = await run(m, tmp_path / "b.db", env, tmp_path, *more)
    assert done.code == 2, (done.out, done.err)
    assert expected in done.err and "Traceback" not in done.err, done.err
    if fault == "not a gs folder":
        assert f"{m}:" in done.err  # named where it is written
    if fault in ("no staging", "express mode"):
        assert len(done.err.strip().splitlines()) == 1 and emu.api_key not in done.err, done.err
    stats = emu.stats
    assert stats.jobs_created == 0 and stats.objects_written == 0 and stats.batch_rows_billed == 0


async def test_emulate_runs_vertex_batch_out_of_the_box(tmp_path: Path) -> None:
    n = 4
    m = manifest(tmp_path / "rehearsal.yaml", n)  # no staging: the emulated endpoint brings its own bucket
    env = {k: v for k, v in cli_env(None).items() if k not in (*GOOGLE_VARS, "STORAGE_EMULATOR_HOST")}
    done = await run(m, tmp_path / "b.db", env, tmp_path, "--emulate")
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == head["batch_billed"] == n and head["cost_usd"] == usd(n * LINE_PRICE), head
    assert head["api_calls"]["batch_create"] == 1 and head["api_calls"]["file_delete"] == 2, head["api_calls"]
    assert all(Path(r["output_path"]).is_file() for r in rows(tmp_path / "b.db"))


async def test_cancel_stops_the_jobs_and_deletes_their_staged_inputs(start_vertex: StartVertex, tmp_path: Path) -> None:
    """`batcher cancel` finds the staging place the run was given with `--staging`: kept with the job."""
    n = 6
    emu = await start_vertex(batch_latency=Latency("fixed", 600.0))
    m = batch_manifest(tmp_path / "cancel.yaml", n, staging=None)
    db = tmp_path / "b.db"
    env = env_of(emu, tmp_path)
    submitted = await run(m, db, env, tmp_path, "--no-wait", "--staging", STAGING)
    assert submitted.code == 5, submitted.err
    shards = math.ceil(n / SHARD)
    assert len([o for o in staged_objects(emu) if o.endswith("/input.jsonl")]) == shards
    cancelled = await batcher("cancel", "cancel", "--db", str(db), env=env, cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    assert f"cancelled {shards} batch shard" in cancelled.err, cancelled.err
    assert emu.stats.jobs_by_state.get("JOB_STATE_CANCELLED") == shards, emu.stats.jobs_by_state
    got = rows(db)
    assert {r["status"] for r in got} == {"pending"} and all(r["reserved_micros"] == 0 for r in got)
    assert emu.stats.batch_rows_billed == 0 and staged_objects(emu) == []
