"""Attacks on the bucket paths: a writer racing the cache's copy, Batch Mode's lines when the bucket refuses them,
a stray duplicate reply stored in a bucket. Each drives the real servers (moto's S3, fake-gcs-server) and the
API emulators; money is read from the emulators' own billing."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from batcher import storage
from batcher.cache import copy_object
from batcher.emulator import Emulator, Latency
from batcher.storage.objects import PROBE_PREFIX
from batcher.storage.remote import FsspecStorage
from tests.acceptance.cli_kit import Done, batcher, cli_env, finish, manifest, start
from tests.acceptance.test_gemini_batch import billed_once_each, keys_of, ledger_is_the_api
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import billed_by_the_api, report_of, until
from tests.bucket_kit import GcsServer, S3Proxy, S3Server, s3_proxy, sha
from tests.conftest import StartEmulator, StartGemini
from tests.storage.test_bucket_jobs import chain

FAST = Latency("uniform", 0.05, 0.2)


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(params=["s3", "gs"])
async def server(
    request: pytest.FixtureRequest, s3: S3Server, gcs: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Any]]:
    found: Any = s3 if request.param == "s3" else gcs
    for k, v in found.env().items():
        monkeypatch.setenv(k, v)
    yield request.param, found
    await storage.close_all()


async def test_a_writer_racing_the_caches_copy_is_never_overwritten(
    server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    scheme, srv = server
    bucket = srv.bucket()
    ours, foreign = png((10, 20, 30)), png((200, 0, 0))
    srv.put(bucket, "job1/cat.png", ours)
    target = f"{scheme}://{bucket}/job2/cat.png"

    # another writer lands its object at the target just before this process writes there, whatever the check
    # made before: the window between "absent" and the write
    def racing(name: str) -> Any:
        original = getattr(FsspecStorage, name)

        async def wrapped(self: FsspecStorage, *args: Any) -> Any:
            if target in args and target not in raced:
                raced.append(target)
                srv.put(bucket, "job2/cat.png", foreign)
            return await original(self, *args)

        return wrapped

    raced: list[str] = []
    monkeypatch.setattr(FsspecStorage, "copy", racing("copy"))
    monkeypatch.setattr(FsspecStorage, "put_new", racing("put_new"))
    copied = await copy_object(f"{scheme}://{bucket}/job1/cat.png", sha(ours), f"{scheme}://{bucket}/job2", "cat")
    assert raced, "the racing writer never ran"
    assert srv.get(bucket, "job2/cat.png") == foreign  # the other writer's object, unchanged
    assert copied is not None and copied.path != target
    kept = copied.path.split(f"{scheme}://{bucket}/", 1)[1]
    assert kept.startswith("job2/cat.dup-") and srv.get(bucket, kept) == ours


def batch_run(m: Path, db: Path, out: str, *more: str) -> tuple[str, ...]:
    return ("run", str(m), "--db", str(db), "--out", out, "--provider", "gemini", "--route", "batch", "-q",
            "--json", *more)  # fmt: skip


async def test_batch_mode_outage_while_collecting_stops_clearly_and_a_later_run_stores_each_line_once(
    start_gemini: StartGemini, tmp_path: Path, s3: S3Server
) -> None:
    async with s3_proxy(s3) as outage:
        await _batch_outage(start_gemini, tmp_path, s3, outage)


async def _batch_outage(start_gemini: StartGemini, tmp_path: Path, s3: S3Server, outage: S3Proxy) -> None:
    emu = await start_gemini(batch_latency=Latency("fixed", 1.0), image_bytes=20_000)
    bucket = s3.bucket()
    n = 4
    m = manifest(tmp_path / "bo.yaml", n, provider="gemini", route="batch")
    db = tmp_path / "b.db"
    (tmp_path / "tmp").mkdir()
    env = gemini_env(emu, **{**s3.env(), "AWS_ENDPOINT_URL": outage.endpoint}, TMPDIR=str(tmp_path / "tmp"))
    out = f"s3://{bucket}/bo"
    submitted = await batcher(*batch_run(m, db, out, "--no-wait"), env=env, cwd=tmp_path, timeout=90)
    assert submitted.code == 5, submitted.err
    emu.advance(5)  # the batch is done at the API
    outage.down = True
    failed = await batcher(*batch_run(m, db, out), env=env, cwd=tmp_path, timeout=90)
    assert outage.refused >= 1
    assert failed.code == 1, failed.err
    lines = [x for x in failed.err.strip().splitlines() if x.strip()]
    assert lines and "Traceback" not in failed.err, failed.err
    assert f"s3://{bucket}" in lines[-1] and "run again to store them, at no new charge" in lines[-1], failed.err
    assert s3.keys(bucket) == {}  # nothing half-stored
    assert all(r["status"] != "succeeded" for r in rows(db))
    # `retry --only download` after the outage: the paid lines are not created again, and it says what to run
    retried = await batcher("retry", "bo", "--db", str(db), "--only", "download", env=env, cwd=tmp_path)
    assert retried.code == 0, retried.err
    assert f"{n} lines wait in open Batch Mode shards" in retried.out, retried.out
    assert emu.stats.batches_created == 1 and emu.stats.images_billed == 0
    outage.down = False
    done = await batcher(*batch_run(m, db, out), env=env, cwd=tmp_path, timeout=90)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    assert emu.stats.batches_created == 1  # collected again from the same batch, never created anew
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    assert sorted(s3.keys(bucket)) == sorted(f"bo/{i}.png" for i in range(n))
    for r in rows(db):
        data = s3.get(bucket, r["output_path"].split(f"s3://{bucket}/", 1)[1])
        assert (sha(data), len(data)) == (r["sha256"], r["bytes"])
    assert not list((tmp_path / "tmp").rglob("*.img"))  # the kept copies are gone once stored


async def test_a_reply_after_a_takeover_is_kept_in_the_bucket_as_a_paid_duplicate(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    # every create is held 3 s before the API takes it: long enough for the first worker to be paused mid-create
    emu = await start_emu(latency=FAST, slow_rate=1.0, slow_s=3.0, fault_kinds=["create"])
    bucket = s3.bucket()
    n = 3
    m = manifest(tmp_path / "stray.yaml", n)
    db = tmp_path / "b.db"
    env = cli_env(emu, **s3.env(), BATCHER_LEASE_S="1.5")
    out = ("--out", f"s3://{bucket}/stray")
    first = await start("run", str(m), "--db", str(db), *out, "-q", env=env, cwd=tmp_path)
    await until(lambda: emu.state.in_flight >= n, "the first worker's creates to reach the API")
    first.send_signal(signal.SIGSTOP)  # a paused machine: its lease runs out while its creates are accepted
    try:
        second = await batcher("run", str(m), "--db", str(db), *out, "-q", env=env, cwd=tmp_path)
        assert second.code == 0, second.err  # it took the tasks over and created them again
    finally:
        first.send_signal(signal.SIGCONT)
    own = {k: s3.get(bucket, k) for k in s3.keys(bucket)}
    assert sorted(own) == sorted(f"stray/{i}.png" for i in range(n))
    resumed = await finish(first)  # its replies come in now: each paid image kept, none over a task's object
    assert resumed.code == 0, resumed.err
    assert emu.stats.creates_accepted == 2 * n
    head = (await report_of(db, tmp_path))["summary"]
    assert head["succeeded"] == n and head["known_duplicates"] == n, head
    assert head["billed_calls"] == billed_by_the_api(emu) == 2 * n
    assert {k: s3.get(bucket, k) for k in own} == own  # the tasks' objects unchanged
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT output_path, sha256 FROM strays WHERE status = 'succeeded'").fetchall()
    assert len(kept) == n
    keys = s3.keys(bucket)
    assert len(keys) == 2 * n
    for location, digest in kept:
        key = location.split(f"s3://{bucket}/", 1)[1]
        assert key.startswith("stray/") and ".dup-" in key and sha(s3.get(bucket, key)) == digest


# --- one task, one upload: a kill -9 or a fault in each window of the save -----------------------------------


async def _one_task_with(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server, rig: Callable[[S3Proxy, Process], None]
) -> tuple[Emulator, str, Path, Done]:
    """One task run to `s3://BUCKET/w` through a proxy that `rig` sets up (once the process has started), to its
    end; returns the emulator, the bucket, the store and how that run ended."""
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    m = manifest(tmp_path / "w.yaml", 1)
    db = tmp_path / "b.db"
    async with s3_proxy(s3) as proxy:
        env = cli_env(emu, **{**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint})
        proc = await start("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/w", "-q", "--json", env=env,
                           cwd=tmp_path)  # fmt: skip
        rig(proxy, proc)
        done = await finish(proc)
    return emu, bucket, db, done


async def _resume_and_check(tmp_path: Path, emu: Emulator, s3: S3Server, bucket: str, db: Path) -> None:
    """A plain resume stores the one image once, under its own key, byte-exact; it was created and billed once."""
    m = tmp_path / "w.yaml"
    done = await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/w", "-q", "--json",
                         env=cli_env(emu, **s3.env()), cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == 1 and head["billed_calls"] == 1 and head["unknown_submissions"] == 0, head
    assert emu.stats.creates_accepted == 1 and billed_by_the_api(emu) == 1
    assert list(s3.keys(bucket)) == ["w/0.png"]  # no duplicate, no probe
    (row,) = rows(db)
    assert row["output_path"] == f"s3://{bucket}/w/0.png" and row["last_error"] is None, row
    assert sha(s3.get(bucket, "w/0.png")) == row["sha256"]


def _kill_once(proc: Process) -> Callable[[str], None]:
    def kill(_: str) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)

    return kill


async def test_a_kill_9_between_the_fetch_and_the_create_then_resume_fetches_again_unpaid(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    def rig(proxy: S3Proxy, proc: Process) -> None:
        proxy.before_put = _kill_once(proc)
        proxy.down = True  # the upload never reaches the server

    emu, bucket, db, done = await _one_task_with(tmp_path, start_emu, s3, rig)
    assert done.code == -signal.SIGKILL, done.err
    assert s3.keys(bucket) == {}
    await _resume_and_check(tmp_path, emu, s3, bucket, db)


async def test_a_kill_9_between_the_create_and_the_commit_then_resume_takes_the_object_as_its_own(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    def rig(proxy: S3Proxy, proc: Process) -> None:
        proxy.after_put = _kill_once(proc)  # the object is stored; the store never hears of it

    emu, bucket, db, done = await _one_task_with(tmp_path, start_emu, s3, rig)
    assert done.code == -signal.SIGKILL, done.err
    assert list(s3.keys(bucket)) == ["w/0.png"]
    stored = s3.get(bucket, "w/0.png")
    assert rows(db)[0]["status"] != "succeeded"
    await _resume_and_check(tmp_path, emu, s3, bucket, db)
    assert s3.get(bucket, "w/0.png") == stored


async def test_an_upload_answered_503_then_taken_is_stored_once(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    seen: list[S3Proxy] = []

    def rig(proxy: S3Proxy, proc: Process) -> None:
        proxy.fail_next = 2
        seen.append(proxy)

    emu, bucket, db, done = await _one_task_with(tmp_path, start_emu, s3, rig)
    assert done.code == 0, done.err
    assert (seen[0].refused, len(seen[0].stored)) == (2, 1)
    await _resume_and_check(tmp_path, emu, s3, bucket, db)


async def test_an_upload_stored_but_answered_503_is_taken_as_its_own_on_the_next_try(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    seen: list[S3Proxy] = []

    def rig(proxy: S3Proxy, proc: Process) -> None:
        proxy.lose_replies = 1  # the object is there; the client hears 503 and tries again: 412, its own bytes
        seen.append(proxy)

    emu, bucket, db, done = await _one_task_with(tmp_path, start_emu, s3, rig)
    assert done.code == 0, done.err
    assert (seen[0].refused, len(seen[0].stored)) == (1, 1)  # stored once: the try after the lost reply met 412
    await _resume_and_check(tmp_path, emu, s3, bucket, db)


async def test_pull_refuses_an_object_whose_bytes_changed_and_writes_nothing_for_it(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    m = manifest(tmp_path / "pl.yaml", 2)
    db = tmp_path / "b.db"
    env = cli_env(emu, **s3.env())
    assert (await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/pl", "-q", env=env,
                          cwd=tmp_path)).code == 0  # fmt: skip
    good = s3.get(bucket, "pl/1.png")
    s3.put(bucket, "pl/0.png", png((1, 2, 3)))  # replaced behind the job's back
    done = await batcher("pull", "pl", str(tmp_path / "here"), "--db", str(db), env=env, cwd=tmp_path)
    assert done.code != 0, done.err
    assert f"s3://{bucket}/pl/0.png: sha256 differs" in done.err, done.err
    assert not (tmp_path / "here" / "0.png").exists()
    assert (tmp_path / "here" / "1.png").read_bytes() == good
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["1.png"]  # no half file left


async def test_a_chain_whose_parent_object_was_deleted_fails_the_child_unbilled(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    db = tmp_path / "b.db"
    env = cli_env(emu, **s3.env())
    m = chain(tmp_path / "mugs.yaml", f"s3://{bucket}/mugs")
    whole = m.read_text(encoding="utf-8")
    doc = yaml.safe_load(whole)
    doc["tasks"] = doc["tasks"][:1]  # the parent alone first
    m.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    assert (await batcher("run", str(m), "--db", str(db), "-q", env=env, cwd=tmp_path)).code == 0
    s3.client().delete_object(Bucket=bucket, Key="mugs/1-base.png")  # lost from the bucket
    m.write_text(whole, encoding="utf-8")
    done = await batcher("run", str(m), "--db", str(db), "-q", "--json", env=env, cwd=tmp_path)
    assert done.code == 1, done.err
    head = json.loads(done.out)
    assert (head["succeeded"], head["failed"], head["billed_calls"]) == (1, 1, 1), head
    assert emu.stats.creates_accepted == 1 and billed_by_the_api(emu) == 1  # neither made again nor the child sent
    child = next(r for r in rows(db) if r["name"] == "blue")
    assert child["status"] == "failed" and "missing" in child["last_error"], child
    assert s3.keys(bucket) == {}


async def test_a_probe_left_by_a_killed_run_is_gone_after_the_next_run(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    s3.put(bucket, f"pr/{PROBE_PREFIX}0123456789abcdef", b"batcher write probe\n")  # cut between write and delete
    s3.put(bucket, "elsewhere/keep.txt", b"not ours")
    m = manifest(tmp_path / "pr.yaml", 2)
    done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "--out", f"s3://{bucket}/pr", "-q",
                         env=cli_env(emu, **s3.env()), cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    assert sorted(s3.keys(bucket)) == ["elsewhere/keep.txt", "pr/0.png", "pr/1.png"]
    assert emu.stats.creates_accepted == 2


async def test_batch_mode_kill_9_after_a_line_is_stored_then_resume_takes_it_as_its_own(
    start_gemini: StartGemini, tmp_path: Path, s3: S3Server
) -> None:
    emu = await start_gemini(batch_latency=Latency("fixed", 1.0), image_bytes=20_000)
    bucket = s3.bucket()
    n = 3
    m = manifest(tmp_path / "bk.yaml", n, provider="gemini", route="batch")
    db = tmp_path / "b.db"
    (tmp_path / "tmp").mkdir()
    env = gemini_env(emu, **s3.env(), TMPDIR=str(tmp_path / "tmp"))
    out = f"s3://{bucket}/bk"
    submitted = await batcher(*batch_run(m, db, out, "--no-wait"), env=env, cwd=tmp_path, timeout=90)
    assert submitted.code == 5, submitted.err
    emu.advance(5)
    async with s3_proxy(s3) as proxy:
        killing = {**env, "AWS_ENDPOINT_URL": proxy.endpoint}
        proc = await start(*batch_run(m, db, out), env=killing, cwd=tmp_path)
        proxy.after_put = _kill_once(proc)  # the first line's object is stored; its line is never settled
        killed = await finish(proc, timeout=90)
    assert killed.code == -signal.SIGKILL, killed.err
    first = dict(s3.keys(bucket))
    assert len(first) == 1 and all(r["status"] != "succeeded" for r in rows(db))
    done = await batcher(*batch_run(m, db, out), env=env, cwd=tmp_path, timeout=90)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n and emu.stats.batches_created == 1
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    assert sorted(s3.keys(bucket)) == sorted(f"bk/{i}.png" for i in range(n))  # no duplicate of the first
    for r in rows(db):
        data = s3.get(bucket, r["output_path"].split(f"s3://{bucket}/", 1)[1])
        assert (sha(data), len(data)) == (r["sha256"], r["bytes"]) and r["last_error"] is None


async def test_gemini_online_upload_outage_then_retry_stores_the_paid_images_without_paying_again(
    start_gemini: StartGemini, tmp_path: Path, s3: S3Server
) -> None:
    emu = await start_gemini(latency=FAST, image_bytes=20_000)
    bucket = s3.bucket()
    n = 2
    m = manifest(tmp_path / "go.yaml", n, provider="gemini")
    db = tmp_path / "b.db"
    out = ("--out", f"s3://{bucket}/go")
    tmp = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    async with s3_proxy(s3) as proxy:
        proxy.down = True
        env = gemini_env(emu, **{**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint}, TMPDIR=tmp)
        failed = await batcher("run", str(m), "--db", str(db), *out, "-q", "--json", env=env, cwd=tmp_path)
    assert failed.code == 1, failed.err
    assert emu.stats.images_billed == n and s3.keys(bucket) == {}
    assert all("kept on this machine" in r["last_error"] for r in rows(db)), rows(db)
    env = gemini_env(emu, **s3.env(), TMPDIR=tmp)
    retried = await batcher("retry", "go", "--only", "download", "--db", str(db), env=env, cwd=tmp_path)
    assert retried.code == 0, retried.err
    done = await batcher("run", str(m), "--db", str(db), *out, "-q", "--json", env=env, cwd=tmp_path)
    assert done.code == 0, (done.err[-1500:], [(r["status"], r["last_error"]) for r in rows(db)])
    head = json.loads(done.out)
    assert head["succeeded"] == n and head["billed_calls"] == n, head
    assert emu.stats.images_billed == n  # stored from what was paid for, never generated again
    assert sorted(s3.keys(bucket)) == sorted(f"go/{i}.png" for i in range(n))
    for r in rows(db):
        data = s3.get(bucket, r["output_path"].split(f"s3://{bucket}/", 1)[1])
        assert (sha(data), len(data)) == (r["sha256"], r["bytes"])
    assert not list((tmp_path / "tmp").rglob("*.img"))  # the kept copies are gone once stored
