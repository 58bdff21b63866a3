"""`kill -9` of a run writing to a bucket, at random moments, then a resume: every task's object under its exact
key, byte-exact, nothing partial, nothing created twice beyond the flagged unknown submissions."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.acceptance.test_cli_run import no_double_creates
from tests.bucket_kit import S3Server, sha
from tests.conftest import StartEmulator
from tests.storage.test_bucket_runs import report


async def test_kill_9_at_random_moments_then_resume_leaves_exact_objects(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.2, 0.8))
    bucket = s3.bucket()
    n = 30
    m = manifest(tmp_path / "kills.yaml", n)
    env = cli_env(emu, **s3.env(), BATCHER_LEASE_S="1")
    db = tmp_path / "b.db"
    args = ("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/k", "-q", "--max-in-flight", "8")
    rng = random.Random(24)
    for _ in range(3):
        proc = await start(*args, env=env, cwd=tmp_path)
        await asyncio.sleep(rng.uniform(0.6, 2.0))
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await finish(proc)
    done = await batcher(*args, "--json", env=env, cwd=tmp_path, timeout=120)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    no_double_creates(emu, int(head["unknown_submissions"]))
    keys = s3.keys(bucket)
    rows = (await report(db, tmp_path, env))["tasks"]
    files = {r["file"].split(f"s3://{bucket}/", 1)[1] for r in rows}
    assert files == {f"k/{i}.png" for i in range(n)}
    # nothing else in the bucket but paid duplicates of stray replies, named as such
    assert all(k in files or ".dup-" in k for k in keys), sorted(keys)
    for r in rows:
        data = s3.get(bucket, r["file"].split(f"s3://{bucket}/", 1)[1])
        assert (sha(data), len(data)) == (r["sha256"], r["bytes"])
