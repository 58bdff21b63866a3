"""Batch Mode with the outputs in a bucket, attacked: a worker killed mid-file, its results file expired
before the next run. Every line the API billed is in the ledger or flagged, each image stored once, byte-exact."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.acceptance.cli_kit import batcher, finish, start
from tests.acceptance.test_batch_money_truth import HOURS_49, money_is_the_apis
from tests.acceptance.test_gemini_batch import QUICK, batch_manifest
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import until
from tests.bucket_kit import S3Server, sha
from tests.conftest import StartGemini


async def test_a_bucket_job_killed_mid_file_then_its_results_file_expired_pays_nothing_twice_unflagged(
    start_gemini: StartGemini, tmp_path: Path, s3: S3Server
) -> None:
    n = 5
    # seed 88 draws the first shard's lines failed, failed, image, image, image (the file's order)
    emu = await start_gemini(batch_latency=QUICK, batch_line_fail_rate=0.4, image_bytes=3_000_000, seed=88)
    bucket = s3.bucket()
    m = batch_manifest(tmp_path / "bmid.yaml", n, provider="gemini", route="batch")
    db = tmp_path / "b.db"
    (tmp_path / "tmp").mkdir()
    env = gemini_env(emu, **s3.env(), TMPDIR=str(tmp_path / "tmp"))
    cmd = ("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/bmid", "-q", "--json")
    proc = await start(*cmd, env=env, cwd=tmp_path)
    await until(lambda: emu.stats.batches_created >= 1, "the shard to be created")
    emu.configure(batch_line_fail_rate=0.0)  # the failed lines' later shard succeeds
    first = next(iter(emu.state.batches.values()))
    assert [line.fate for line in first.lines] == ["failed", "failed", "image", "image", "image"]
    await until(lambda: len(s3.keys(bucket)) >= 1 or proc.returncode is not None, "the first image to be stored")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    assert 1 <= len(s3.keys(bucket)) < 3, s3.keys(bucket)
    emu.advance(HOURS_49)  # the results file has expired before the next run collects the rest
    done = await batcher(*cmd, env=env, cwd=tmp_path, timeout=60.0)
    assert done.out, done.err
    head = json.loads(done.out)
    images = {line.key for line in first.lines if line.fate == "image"}
    by_key = {r["key"]: r for r in rows(db)}
    lost = {k for k in images if by_key[k]["status"] != "succeeded"}
    assert lost and {by_key[k]["failure"] for k in lost} == {"result_lost"}, (by_key, done.err)
    assert head["paid_result_lost"] == len(lost) and emu.stats.batches_created == 2, head
    money_is_the_apis(head, emu, db)
    served = emu.stats.image_sha256_by_key
    for r in rows(db):
        if r["status"] == "succeeded":
            data = s3.get(bucket, r["output_path"].split(f"s3://{bucket}/", 1)[1])
            assert sha(data) == r["sha256"] == served[r["key"]]
    assert done.code == 1, done.err
