"""The Gemini Batch Mode client over real HTTP against the Gemini emulator: upload, create, poll, list, results."""

from __future__ import annotations

import asyncio
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batcher.emulator import GeminiEmulator
from batcher.providers.base import (
    Absent,
    AuthRejected,
    BatchInfo,
    BatchState,
    Created,
    CreateUnknown,
    FailureKind,
    Found,
    Gone,
    Got,
    LineKind,
    ListingIncomplete,
    NotCreated,
    Ok,
    RateLimited,
    Refused,
    Request,
    ResultLine,
    ResultsCut,
    ResultStream,
    Transient,
    Uploaded,
)
from batcher.providers.gemini import request_body
from batcher.providers.gemini_batch import GeminiBatchClient
from batcher.providers.gemini_batch_files import write_shard
from batcher.providers.gemini_settings import GeminiSettings
from tests.conftest import StartGemini
from tests.emulator.emu_helpers import LITE, read_png
from tests.integration.test_gemini_provider import NOON_PACIFIC, RecordingGate, Sent


def req(prompt: str, size: str = "16x9", images: tuple[str, ...] = ()) -> Request:
    return Request(model=LITE, prompt=prompt, quality="1K", size=size, images=images)


@asynccontextmanager
async def batch_client(
    emu: GeminiEmulator, *, key: str | None = None, **settings: Any
) -> AsyncIterator[tuple[GeminiBatchClient, RecordingGate]]:
    gate = RecordingGate()
    settings.setdefault("base_url", emu.origin)
    api_key = key if key is not None else emu.api_key
    async with GeminiBatchClient(GeminiSettings(**settings), api_key, gate, now=lambda: NOON_PACIFIC) as c:
        yield c, gate


async def upload(c: GeminiBatchClient, tmp_path: Path, *prompts: str) -> str:
    path = tmp_path / "shard.jsonl"
    write_shard(path, ((p, req(p)) for p in prompts))
    got = await c.upload(path, "shard")
    assert isinstance(got, Uploaded), got
    return got.file_name


async def create(c: GeminiBatchClient, gate: RecordingGate, file_name: str, name: str = "job-1") -> Any:
    return await c.create(LITE, file_name, name, before_send=Sent(gate))


async def created(c: GeminiBatchClient, gate: RecordingGate, tmp_path: Path, *prompts: str) -> BatchInfo:
    made = await create(c, gate, await upload(c, tmp_path, *prompts))
    assert isinstance(made, Created), made
    return made.batch


async def finished(c: GeminiBatchClient, emu: GeminiEmulator, name: str) -> BatchInfo:
    """Poll, moving the emulator's clock instead of sleeping, until the batch is done."""
    for _ in range(100):
        got = await c.get(name)
        if isinstance(got, Got) and got.batch.state.is_done:
            return got.batch
        emu.advance(10)
    raise AssertionError(f"{name} never finished")


async def all_lines(c: GeminiBatchClient, file_name: str) -> tuple[list[ResultLine], ResultStream]:
    async with c.results(file_name) as got:
        assert isinstance(got, ResultStream), got
        return [line async for line in got.lines()], got


# --- the whole way -------------------------------------------------------------------------------------


async def test_upload_create_poll_and_stream_the_images(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(batch_latency="fixed:60")
    async with batch_client(emu) as (c, gate):
        file_name = await upload(c, tmp_path, "red", "green", "blue")
        made = await create(c, gate, file_name)
        assert isinstance(made, Created), made
        assert made.batch.state is BatchState.PENDING and made.batch.display_name == "job-1"
        assert made.batch.stats.requests == 3 and made.batch.stats.pending == 3
        assert (made.call.kind, made.call.outcome, made.call.remote_task_id) == ("batch_create", "ok", made.batch.name)
        assert gate.events == ["acquire", "answered", "acquire", "before_send", "answered"]
        done = await finished(c, emu, made.batch.name)
        assert done.state is BatchState.SUCCEEDED and done.responses_file and done.error is None
        assert (done.stats.succeeded, done.stats.failed, done.stats.pending) == (3, 0, 0)
        lines, stream = await all_lines(c, done.responses_file)
    assert [line.key for line in lines] == ["red", "green", "blue"]
    for line in lines:
        assert line.kind is LineKind.IMAGE and line.image is not None and line.image.data is not None
        assert line.image.mime_type == "image/png" and line.response_id
        png = read_png(line.image.data)
        assert (png.width, png.height) == (1376, 768)  # 16x9 went as 16:9, the same body as online
        assert line.usage["candidatesTokensDetails"][0]["modality"] == "IMAGE"
    assert (stream.calls[-1].kind, stream.calls[-1].outcome, stream.calls[-1].detail) == ("download", "ok", "3 lines")
    stats = emu.stats
    assert stats.batches_created == 1 and stats.batch_lines_billed == 3 and stats.files_uploaded == 1


async def test_refused_and_failed_lines_are_classified(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(batch_line_refusal_rate=1.0)
    async with batch_client(emu) as (c, gate):
        refused = await finished(c, emu, (await created(c, gate, tmp_path, "r1", "r2")).name)
        assert refused.responses_file is not None
        lines, _ = await all_lines(c, refused.responses_file)
        assert {line.kind for line in lines} == {LineKind.REFUSED}
        assert lines[0].failure is FailureKind.BLOCKED and lines[0].reason.startswith(
            "blocked by the model: IMAGE_SAFETY"
        )
        assert lines[0].image is None

        emu.configure(batch_line_refusal_rate=0.0, batch_line_fail_rate=1.0)
        path = tmp_path / "bad.jsonl"
        write_shard(path, [("f1", req("f1"))])
        with path.open("ab") as out:
            out.write(b'{"key": "broken", "request": {"contents": "nope"}}\n')
        got = await c.upload(path, "bad")
        assert isinstance(got, Uploaded)
        made = await create(c, gate, got.file_name, "job-2")
        assert isinstance(made, Created)
        failed = await finished(c, emu, made.batch.name)
        assert failed.stats.failed == 2 and failed.responses_file is not None
        lines, _ = await all_lines(c, failed.responses_file)
    by_key = {line.key: line for line in lines}
    assert by_key["f1"].kind is LineKind.FAILED and by_key["f1"].failure is FailureKind.GENERATION
    assert by_key["f1"].error_code == 13 and "Internal error" in by_key["f1"].reason
    assert by_key["broken"].failure is FailureKind.INVALID and by_key["broken"].error_code == 3
    assert emu.stats.batch_lines_billed == 0


async def test_a_line_past_the_cap_is_skipped_and_named(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(image_bytes=300_000)
    async with batch_client(emu, max_reply_bytes=200_000) as (c, gate):
        done = await finished(c, emu, (await created(c, gate, tmp_path, "big1", "big2")).name)
        assert done.responses_file is not None
        lines, stream = await all_lines(c, done.responses_file)
    assert [(line.key, line.kind) for line in lines] == [("big1", LineKind.MALFORMED), ("big2", LineKind.MALFORMED)]
    assert "longer than 200000 bytes" in lines[0].reason and stream.calls[-1].outcome == "ok"


# --- the input file ------------------------------------------------------------------------------------


def test_a_shard_is_one_request_body_a_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    items = [("a", req("one")), ("bad", req("two", images=("https://x/y.png",))), ("b", req("three", size="1x1"))]
    written = write_shard(path, iter(items))
    raw = path.read_bytes()
    assert written.bytes_written == len(raw) and written.lines == 2
    assert [k for k, _ in written.invalid] == ["bad"] and "is a URL" in written.invalid[0][1]
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines == [
        {"key": "a", "request": request_body(items[0][1])},
        {"key": "b", "request": request_body(items[2][1])},
    ]
    with pytest.raises(ValueError, match="twice"):
        write_shard(path, [("a", req("x")), ("a", req("y"))])


# --- creating: proof, or reconcile ---------------------------------------------------------------------


async def test_find_by_display_name_walks_every_page(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini()
    async with batch_client(emu) as (c, gate):
        file_name = await upload(c, tmp_path, "x")
        names = []
        for name in ("alpha", "beta", "gamma", "beta"):
            made = await create(c, gate, file_name, name)
            assert isinstance(made, Created)
            names.append(made.batch.name)
        found = await c.find_by_display_name("beta", page_size=1)
        assert isinstance(found, Found) and [b.name for b in found.batches] == [names[3], names[1]]  # newest first
        assert len(found.calls) == 4 and {call.kind for call in found.calls} == {"batch_list"}
        absent = await c.find_by_display_name("delta", page_size=3)
        assert isinstance(absent, Absent) and len(absent.calls) == 2
        emu.configure(batch_list_unavailable_page=2)
        broken = await c.find_by_display_name("delta", page_size=3)
        assert isinstance(broken, ListingIncomplete) and "503" in broken.message
        assert [call.outcome for call in broken.calls] == ["ok", "transient"]
        # the match was on page 1, but page 2 might hold another: still not a complete answer
        assert isinstance(await c.find_by_display_name("gamma", page_size=3), ListingIncomplete)


async def test_a_create_whose_reply_is_lost_is_unknown_and_the_list_finds_it(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(batch_create_lost_rate=1.0)
    async with batch_client(emu) as (c, gate):
        made = await create(c, gate, await upload(c, tmp_path, "lost"), "lost-one")
        assert isinstance(made, CreateUnknown) and "list to find out" in made.message
        assert made.call.outcome == "ambiguous" and made.call.http_status is None
        assert emu.stats.batches_by_display_name == {"lost-one": 1}  # it was made: creating again would double it
        found = await c.find_by_display_name("lost-one")
        assert isinstance(found, Found) and len(found.batches) == 1


async def test_a_create_answered_503_is_unknown_and_the_list_proves_it_absent(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(batch_create_503_rate=1.0)
    async with batch_client(emu) as (c, gate):
        made = await create(c, gate, await upload(c, tmp_path, "x"), "maybe")
        assert isinstance(made, CreateUnknown) and made.call.http_status == 503
        assert emu.stats.batches_by_display_name == {}
        assert isinstance(await c.find_by_display_name("maybe"), Absent)


async def test_creates_proven_not_made(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini()
    async with batch_client(emu) as (c, gate):
        missing = await create(c, gate, "files/nope")
        assert isinstance(missing, NotCreated) and not missing.retryable and "HTTP 400" in missing.message
        file_name = await upload(c, tmp_path, "x")

        async def refuse() -> None:
            raise RuntimeError("the store said no")

        before = emu.stats.count("batch")
        with pytest.raises(RuntimeError):
            await c.create(LITE, file_name, "never", before_send=refuse)
        assert emu.stats.count("batch") == before  # nothing left
    async with batch_client(emu, key="AIza-wrong") as (c, gate):
        denied = await create(c, gate, file_name)
        assert isinstance(denied, AuthRejected) and "AIza-wrong" not in denied.message
        assert "AIza-wrong" not in repr(c)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with batch_client(emu, base_url=f"http://127.0.0.1:{port}") as (c, gate):
        refused = await create(c, gate, file_name)
        assert isinstance(refused, NotCreated) and refused.retryable
        assert gate.events == ["acquire", "before_send"]  # no reply: the gate hears nothing
    assert emu.stats.batches_created == 0


# --- polling and the batch's ends ----------------------------------------------------------------------


async def test_get_and_download_are_transient_while_unavailable(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(batch_unavailable_s=600)
    async with batch_client(emu) as (c, gate):
        batch = await created(c, gate, tmp_path, "big")
        emu.advance(60)
        unavailable = await c.get(batch.name)
        assert isinstance(unavailable, Transient) and "503" in unavailable.message
        assert unavailable.call.kind == "batch_get" and unavailable.call.http_status == 503
        results = f"files/batch-{batch.name.removeprefix('batches/')}"
        async with c.results(results) as got:
            assert isinstance(got, Transient) and got.call.http_status == 503
        emu.advance(600)
        done = await c.get(batch.name)
        assert isinstance(done, Got) and done.batch.responses_file == results
        lines, _ = await all_lines(c, results)
        assert [line.kind for line in lines] == [LineKind.IMAGE]
    assert emu.stats.batches_created == 1


async def test_expired_and_failed_batches_end_without_results(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(batch_latency="fixed:100", batch_expiry_s=50)
    async with batch_client(emu) as (c, gate):
        expired = await finished(c, emu, (await created(c, gate, tmp_path, "late")).name)
        assert expired.state is BatchState.EXPIRED and expired.responses_file is None
        emu.configure(batch_expiry_s=1000, batch_fail_rate=1.0)
        failed = await finished(c, emu, (await created(c, gate, tmp_path, "doomed")).name)
        assert failed.state is BatchState.FAILED and failed.responses_file is None
        assert failed.error is not None and "The batch failed" in failed.error
        gone = await c.get("batches/nope")
        assert isinstance(gone, Gone) and gone.call.http_status == 404


async def test_cancel_then_delete_the_batch_and_its_file(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini()
    async with batch_client(emu) as (c, gate):
        file_name = await upload(c, tmp_path, "stop")
        made = await create(c, gate, file_name)
        assert isinstance(made, Created)
        name = made.batch.name
        cancelled = await c.cancel(name)
        assert isinstance(cancelled, Ok) and cancelled.call.kind == "batch_cancel"
        assert (await finished(c, emu, name)).state is BatchState.CANCELLED
        again = await c.cancel(name)
        assert isinstance(again, Refused) and "FAILED_PRECONDITION" in again.message
        assert isinstance(await c.delete_batch(name), Ok)
        assert isinstance(await c.get(name), Gone)
        deleted = await c.delete_file(file_name)
        assert isinstance(deleted, Ok) and deleted.call.kind == "file_delete"
        assert emu.stats.files_deleted == 1
        twice = await c.delete_file(file_name)
        assert isinstance(twice, Gone)  # Google answers 403 for a file that is not there
    assert emu.stats.batch_lines_billed == 0


# --- memory --------------------------------------------------------------------------------------------


async def test_a_big_results_file_streams_in_bounded_memory(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(image_bytes=1_500_000)
    async with batch_client(emu) as (c, gate):
        path = tmp_path / "big.jsonl"
        write_shard(path, ((f"k{i}", req("the same prompt")) for i in range(100)))
        got = await c.upload(path, "big")
        assert isinstance(got, Uploaded)
        made = await create(c, gate, got.file_name)
        assert isinstance(made, Created)
        done = await finished(c, emu, made.batch.name)
        assert done.responses_file is not None
        async with c.results(done.responses_file) as warm:  # the emulator encodes its PNG once: not ours to count
            assert isinstance(warm, ResultStream)
            async for _ in warm.lines():
                break
        tracemalloc.start()
        try:
            count = total = 0
            async with c.results(done.responses_file) as stream:
                assert isinstance(stream, ResultStream)
                async for line in stream.lines():
                    assert line.kind is LineKind.IMAGE and line.image is not None and line.image.data
                    count += 1
                    total += len(line.image.data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == 100 and total > 140_000_000  # ~200 MB of base64 went by
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MB"


# --- replies the emulator does not send ----------------------------------------------------------------


@asynccontextmanager
async def fake_api(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """A one-off server on loopback for replies the emulator has no knob for; its origin."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_stream_that_breaks_off_raises_results_cut() -> None:
    line = json.dumps({"key": "only", "error": {"code": 13, "message": "x"}}).encode() + b"\n"

    async def half(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(line + b'{"key": "cut", "resp')
        assert request.transport is not None
        request.transport.abort()
        return resp

    async with fake_api([web.get("/download/v1beta/files/{id}", half)]) as url:
        gate = RecordingGate()
        async with GeminiBatchClient(GeminiSettings(base_url=url), "k", gate) as c:
            async with c.results("files/abc") as stream:
                assert isinstance(stream, ResultStream)
                seen: list[str | None] = []
                with pytest.raises(ResultsCut, match="after 1 lines"):
                    async for got in stream.lines():
                        seen.append(got.key)
    assert seen == ["only"] and stream.calls[-1].outcome == "transient"


async def test_429_and_other_shapes_of_reply() -> None:
    quota = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}],
        }
    }
    bare = {  # a batch resource without its Operation, states spelled JOB_STATE_, output under metadata
        "name": "batches/b1",
        "displayName": "old",
        "state": "JOB_STATE_SUCCEEDED",
        "batchStats": {"requestCount": "2", "successfulRequestCount": "2"},
        "output": {"responsesFile": "files/r1"},
    }

    async def limited(request: web.Request) -> web.Response:
        return web.json_response(quota, status=429)

    async def batch(request: web.Request) -> web.Response:
        return web.json_response(bare)

    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>502</html>", content_type="text/html")

    routes = [
        web.post("/v1beta/models/{call}", limited),
        web.get("/v1beta/batches/{id}", batch),
        web.post("/v1beta/batches/{call}", gateway),
    ]
    async with fake_api(routes) as url:
        gate = RecordingGate()
        async with GeminiBatchClient(GeminiSettings(base_url=url), "k", gate) as c:
            limited_create = await c.create(LITE, "files/x", "n", before_send=Sent(gate))
            got = await c.get("batches/b1")
            cancelled = await c.cancel("batches/b1")
    assert isinstance(limited_create, RateLimited) and limited_create.wait_s == 31.0
    assert gate.waits == [31.0]
    assert isinstance(got, Got) and got.batch.state is BatchState.SUCCEEDED
    assert got.batch.responses_file == "files/r1" and got.batch.stats.requests == 2 and got.batch.stats.pending == 0
    assert isinstance(cancelled, Transient) and cancelled.call.http_status == 502


async def test_an_upload_streams_from_disk(tmp_path: Path) -> None:
    received = 0

    async def start(request: web.Request) -> web.Response:
        if "upload_id" not in request.query:
            assert request.headers["X-Goog-Upload-Header-Content-Length"] == str(size)
            return web.Response(headers={"X-Goog-Upload-URL": f"{url}/upload/v1beta/files?upload_id=u1"})
        nonlocal received
        assert "x-goog-api-key" not in request.headers  # the upload URL is its own credential
        async for chunk in request.content.iter_chunked(1 << 16):  # counted, never kept
            received += len(chunk)
        return web.json_response({"file": {"name": "files/f1", "sizeBytes": str(received)}})

    path = tmp_path / "big.jsonl"
    size = 64 * 2**20
    with path.open("wb") as out:
        for _ in range(64):
            out.write(b"x" * 2**20)
    async with fake_api([web.post("/upload/v1beta/files", start)]) as url:
        async with GeminiBatchClient(GeminiSettings(base_url=url), "k", RecordingGate()) as c:
            tracemalloc.start()
            try:
                got = await c.upload(path, "big")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert isinstance(got, Uploaded) and got.file_name == "files/f1" and received == size
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MB"


async def test_a_create_that_waited_for_a_pooled_connection_past_its_timeout_never_left(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    """The pool's one connection is busy with a create whose reply is held: the next create waits for a
    connection past the connect timeout. Its request never left, so it is NotCreated (retryable), not unknown."""
    emu = await start_gemini(batch_create_delay_s=30.0)
    async with batch_client(emu, max_connections=1, connect_timeout_s=0.3) as (c, gate):
        file_name = await upload(c, tmp_path, "a red mug")
        held = asyncio.create_task(create(c, gate, file_name, "held"))
        for _ in range(500):
            if emu.stats.batches_created:
                break
            await asyncio.sleep(0.01)
        waited = await create(c, gate, file_name, "waited")
        assert isinstance(waited, NotCreated) and waited.retryable, waited
        assert emu.stats.batches_created == 1
        emu.advance(30.0)
        assert isinstance(await held, Created)
