"""Attacks on the bucket paths: a writer racing the cache's copy, Batch Mode's lines when the bucket refuses them,
a stray duplicate reply stored in a bucket. Each drives the real servers (moto's S3, fake-gcs-server) and the
API emulators; money is read from the emulators' own billing."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from batcher import storage
from batcher.cache import copy_object
from batcher.emulator import Latency
from batcher.storage.objects import PROBE_PREFIX
from batcher.storage.remote import FsspecStorage
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.acceptance.test_gemini_batch import billed_once_each, keys_of, ledger_is_the_api
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import billed_by_the_api, report_of, until
from tests.bucket_kit import GcsServer, S3Server, sha
from tests.conftest import StartEmulator, StartGemini

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


@dataclass
class Outage:
    """An HTTP proxy in front of the S3 server that the test can turn into an outage: while `down`, every PUT of
    an object (the probe's excepted, so that a run still starts) is answered 503 SlowDown, as S3 does when it
    sheds load. `fail_next` answers that many PUTs 503 and then lets them through."""

    upstream: str
    down: bool = False
    fail_next: int = 0
    refused: int = 0
    puts: list[str] = field(default_factory=list)
    endpoint: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "PUT" and PROBE_PREFIX not in request.path and request.path.count("/") >= 2:
            if self.down or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                self.refused += 1
                xml = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                return web.Response(status=503, body=xml, content_type="application/xml")
            self.puts.append(request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers, allow_redirects=False
            ) as r,
        ):
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
            return web.Response(status=r.status, body=data, headers=out)


@pytest.fixture
async def outage(s3: S3Server) -> AsyncIterator[Outage]:
    proxy = Outage(s3.endpoint)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()


def batch_run(m: Path, db: Path, out: str, *more: str) -> tuple[str, ...]:
    return ("run", str(m), "--db", str(db), "--out", out, "--provider", "gemini", "--route", "batch", "-q",
            "--json", *more)  # fmt: skip


async def test_batch_mode_outage_while_collecting_stops_clearly_and_a_later_run_stores_each_line_once(
    start_gemini: StartGemini, tmp_path: Path, s3: S3Server, outage: Outage
) -> None:
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
