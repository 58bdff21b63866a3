"""Jobs around a bucket, over the real CLI: a chain whose parent is read from the bucket, the cache serving
another job by a conditional copy, the HTML report made from the objects, `pull`, and an upload outage finished
by `retry --only download` without paying again."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, manifest
from tests.bucket_kit import S3Server, s3_proxy
from tests.conftest import StartEmulator
from tests.storage.test_bucket_runs import report

FAST = Latency("uniform", 0.05, 0.2)


def chain(path: Path, out: str) -> Path:
    doc: dict[str, Any] = {
        "job": path.stem,
        "output": {"dir": out, "filename": "{slug}.png"},
        "tasks": [
            {"name": "base", "prompt": "a white mug", "slug": "1-base"},
            {"name": "blue", "from": "base", "prompt": "make it blue", "slug": "2-blue"},
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


async def test_a_chain_reads_its_parent_from_the_bucket_and_the_cache_copies_across_jobs(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    env = cli_env(emu, **s3.env())
    db = tmp_path / "b.db"
    first = chain(tmp_path / "mugs.yaml", f"s3://{bucket}/mugs")
    done = await batcher("run", str(first), "--db", str(db), "-q", env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    assert emu.stats.creates_accepted == 2
    # the chained create sent its parent's bytes, which only the bucket holds (no local output exists)
    assert not any(tmp_path.rglob("*.png"))
    # a second job of the same specs, another prefix: served by the cache, nothing created
    second = chain(tmp_path / "again.yaml", f"s3://{bucket}/again")
    done = await batcher("run", str(second), "--db", str(db), "-q", env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    assert emu.stats.creates_accepted == 2
    rows = {r["task"]: r for r in (await report(db, tmp_path, env, "again"))["tasks"]}
    assert rows["base"]["file"] == f"s3://{bucket}/again/1-base.png" and rows["base"]["cached_from"]
    keys = s3.keys(bucket)
    assert sorted(keys) == ["again/1-base.png", "again/2-blue.png", "mugs/1-base.png", "mugs/2-blue.png"]
    for name in ("1-base.png", "2-blue.png"):
        assert s3.get(bucket, f"again/{name}") == s3.get(bucket, f"mugs/{name}")


async def test_the_html_report_and_pull_work_from_the_bucket(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    env = cli_env(emu, **s3.env())
    db = tmp_path / "b.db"
    m = manifest(tmp_path / "shop.yaml", 3)
    assert (await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/shop", "-q", env=env,
                          cwd=tmp_path)).code == 0  # fmt: skip
    before = {k: s3.get(bucket, k) for k in s3.keys(bucket)}
    page = tmp_path / "site" / "report.html"
    page.parent.mkdir()
    done = await batcher("report", "shop", "--db", str(db), "--format", "html", "-o", str(page), env=env,
                         cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    assert "3 made" in done.err
    html = page.read_text(encoding="utf-8")
    thumbs = list((tmp_path / "site" / "report_files" / "thumbs").glob("*.webp"))
    assert len(thumbs) == 3
    links = re.findall(r'<a class="thumb" href="([^"]+)"', html)
    assert len(links) == 3 and all("X-Amz-Signature=" in link and "X-Amz-Expires=604800" in link for link in links)
    assert "stop working at" in html
    async with aiohttp.ClientSession() as session:  # a signed link opens the original, byte for byte
        async with session.get(links[0].replace("&amp;", "&")) as r:
            assert r.status == 200 and (await r.read()) in before.values()
    assert {k: s3.get(bucket, k) for k in s3.keys(bucket)} == before  # fetched, never rewritten
    # pull: every output into a local folder, each sha256 checked
    done = await batcher("pull", "shop", str(tmp_path / "here"), "--db", str(db), env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    rows = (await report(db, tmp_path, env))["tasks"]
    for r in rows:
        local = tmp_path / "here" / r["file"].rsplit("/", 1)[1]
        assert hashlib.sha256(local.read_bytes()).hexdigest() == r["sha256"]
    again = await batcher("pull", "shop", str(tmp_path / "here"), "--db", str(db), env=env, cwd=tmp_path)
    assert again.code == 0 and "0 copied, 3 already there" in again.err


async def test_an_upload_outage_leaves_tasks_paid_not_saved_and_retry_finishes_them_unpaid(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    async with s3_proxy(s3) as proxy:
        proxy.down = True
        db = tmp_path / "b.db"
        m = manifest(tmp_path / "out.yaml", 3)
        flaky = cli_env(emu, **{**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint})
        done = await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/o", "-q", "--json",
                             env=flaky, cwd=tmp_path)  # fmt: skip
        assert done.code == 1, done.err
        head = json.loads(done.out)
        assert (head["failed"], head["billed_calls"], head["paid_unusable"]) == (3, 3, 3)
        assert proxy.refused >= 3 * 2  # each upload was tried again before the task was given up
        assert s3.keys(bucket) == {}
    env = cli_env(emu, **s3.env())
    retried = await batcher("retry", "out", "--only", "download", "--db", str(db), env=env, cwd=tmp_path)
    assert retried.code == 0, retried.err
    done = await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/o", "-q", "--json", env=env,
                         cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    assert sorted(s3.keys(bucket)) == ["o/0.png", "o/1.png", "o/2.png"]
    assert emu.stats.creates_accepted == 3  # fetched again, never created again
