"""Gemini Batch Mode with the outputs in a bucket: the result lines' images stored by conditional create (no
local image, no local shard file left), and a planned shard's requests file written again from the store on a
machine that never had it (the parent's image read from the bucket)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from batcher import storage
from batcher.emulator import Latency
from batcher.providers.gemini_batch import GeminiBatchClient
from batcher.providers.gemini_settings import GeminiSettings
from batcher.ratelimit import RateGate
from batcher.runner.batch_bucket import rebuild_shard_file
from batcher.store import Store
from batcher.store.base import _task
from tests.acceptance.cli_kit import batcher, cli_env, manifest
from tests.acceptance.test_gemini_batch import billed_once_each, keys_of, ledger_is_the_api
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.bucket_kit import S3Server, sha
from tests.conftest import StartEmulator, StartGemini
from tests.storage.test_bucket_jobs import chain


async def test_batch_mode_stores_each_line_in_the_bucket(
    start_gemini: StartGemini, tmp_path: Path, s3: S3Server
) -> None:
    emu = await start_gemini(batch_latency=Latency("fixed", 1.0), image_bytes=50_000)
    bucket = s3.bucket()
    n = 6
    m = manifest(tmp_path / "bm.yaml", n, provider="gemini", route="batch")
    db = tmp_path / "b.db"
    env = gemini_env(emu, **s3.env(), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    done = await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/bm", "-q", "--json", env=env,
                         cwd=tmp_path, timeout=90)  # fmt: skip
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == n
    billed_once_each(emu, keys_of(db))
    ledger_is_the_api(head, emu)
    assert sorted(s3.keys(bucket)) == sorted(f"bm/{i}.png" for i in range(n))
    for r in rows(db):
        data = s3.get(bucket, r["output_path"].split(f"s3://{bucket}/", 1)[1])
        assert (sha(data), len(data)) == (r["sha256"], r["bytes"])
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.jsonl"))


async def test_a_planned_shard_file_is_written_again_from_the_store(
    start_emu: StartEmulator, tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.05, 0.2))
    bucket = s3.bucket()
    db = tmp_path / "b.db"
    env = cli_env(emu, **s3.env())
    m = chain(tmp_path / "mugs.yaml", f"s3://{bucket}/mugs")
    assert (await batcher("run", str(m), "--db", str(db), "-q", env=env, cwd=tmp_path)).code == 0
    parent = s3.get(bucket, "mugs/1-base.png")
    for k, v in s3.env().items():  # this process reads the bucket as a worker would
        monkeypatch.setenv(k, v)
    store = await Store.open(str(db))
    try:
        job = (await store.jobs())[0]
        child = next(_task(r) for r in [r async for r in store.task_rows(job)] if r["name"] == "blue")
        path = tmp_path / "elsewhere" / "shard.jsonl"
        assert await rebuild_shard_file(store, GeminiBatchClient(GeminiSettings(), "", RateGate(None)), [child], path)
    finally:
        await store.close()
        await storage.close_all()
    line = json.loads(path.read_text(encoding="utf-8"))
    assert line["key"] == child.key
    text = json.dumps(line["request"])
    assert base64.b64encode(parent).decode() in text  # the parent's bytes, read from the bucket
