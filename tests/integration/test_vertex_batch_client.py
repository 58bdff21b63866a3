"""The Vertex AI batch client over real HTTP against the Vertex emulator and its own Cloud Storage, with google-auth's
real token flow: staging through the storage layer, a create classified as the Gemini create is, jobs read as the
REST API writes them, listings by display name, several output files read line by line, and cleanup."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batcher import storage
from batcher.emulator import Latency
from batcher.emulator.vertex.server import VertexEmulator
from batcher.errors import AuthError, ConfigError, DestinationError
from batcher.providers.auth import ApiKey
from batcher.providers.base import (
    Absent,
    AuthRejected,
    BatchState,
    Created,
    CreateUnknown,
    Found,
    Gone,
    Got,
    LineKind,
    ListingIncomplete,
    NotCreated,
    Ok,
    Refused,
    Request,
    ResultLine,
    ResultStream,
    Uploaded,
)
from batcher.providers.vertex import vertex_credential, vertex_settings
from batcher.providers.vertex_batch import (
    NEEDS_PROJECT,
    NEEDS_STAGING,
    VertexBatchClient,
    VertexBatchSettings,
    batch_settings,
)
from batcher.providers.vertex_jobs import KEY_LABEL
from tests.conftest import StartVertex, _closed_loopback_port
from tests.emulator.emu_helpers import LITE, read_png
from tests.integration.test_gemini_provider import RecordingGate, Sent

BUCKET = "staging-bucket"
STAGING = f"gs://{BUCKET}/batches"
QUICK = Latency("fixed", 1.0)


def env_of(emu: VertexEmulator, tmp: Path, **extra: str) -> dict[str, str]:
    return {"GOOGLE_CLOUD_PROJECT": emu.project, "GOOGLE_VERTEX_BASE_URL": emu.origin,
            "GOOGLE_APPLICATION_CREDENTIALS": str(emu.write_key_file(tmp / "key.json")),
            "STORAGE_EMULATOR_HOST": emu.origin, **extra}  # fmt: skip


def make(emu: VertexEmulator, tmp: Path, gate: RecordingGate | None = None, **extra: str) -> VertexBatchClient:
    env = env_of(emu, tmp, **extra)
    online, credential = vertex_credential(env, vertex_settings(env))
    return VertexBatchClient(batch_settings(online, credential, STAGING, env), credential, gate or RecordingGate())


@asynccontextmanager
async def opened(emu: VertexEmulator, tmp: Path, gate: RecordingGate | None = None) -> AsyncIterator[VertexBatchClient]:
    try:
        async with make(emu, tmp, gate) as client:
            yield client
    finally:
        await storage.close_all()


def objects_under(emu: VertexEmulator, prefix: str) -> list[str]:
    return sorted(n for n in emu.state.store.buckets.get(BUCKET, {}) if n.startswith(prefix))


def items(*prompts: str) -> list[tuple[str, Request]]:
    return [(f"{i:032x}", Request(LITE, p, "1K", "1x1")) for i, p in enumerate(prompts)]


async def staged_job(client: VertexBatchClient, tmp: Path, name: str, n: int) -> tuple[str, Created]:
    """A shard of n requests written, uploaded and created; its input's location and the Created outcome."""
    path = tmp / f"{name}.jsonl"
    written = client.write_shard(path, items(*(f"{name} photo {i}" for i in range(n))))
    assert written.lines == n and not written.invalid
    up = await client.upload(path, name)
    assert isinstance(up, Uploaded), up
    made = await client.create(LITE, up.file_name, name, before_send=_nothing)
    assert isinstance(made, Created), made
    return up.file_name, made


async def _nothing() -> None:
    return None


async def collect(client: VertexBatchClient, where: str) -> tuple[list[ResultLine], ResultStream]:
    async with client.results(where) as got:
        assert isinstance(got, ResultStream), got
        return [line async for line in got.lines()], got


async def ended(client: VertexBatchClient, emu: VertexEmulator, name: str, seconds: float = 5.0) -> Got:
    emu.advance(seconds)
    got = await client.get(name)
    assert isinstance(got, Got) and got.batch.state.is_done, got
    return got


# --- staging, create, get ------------------------------------------------------------------------------------


async def test_a_shard_is_staged_created_and_its_several_files_read_then_deleted(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=3, image_bytes=30_000)
    gate = RecordingGate()
    async with opened(emu, tmp_path, gate) as client:
        gate.events.clear()
        file_name, made = await staged_job(client, tmp_path, "shard-a", 7)
        assert file_name == f"{STAGING}/shard-a/input.jsonl" and objects_under(emu, "batches/shard-a/") == [
            "batches/shard-a/input.jsonl"
        ]
        job = made.batch
        assert job.name.startswith(f"projects/{emu.project_number}/locations/global/batchPredictionJobs/")
        assert job.state is BatchState.PENDING and job.display_name == "shard-a"
        assert gate.events[:3] == ["acquire", "answered", "acquire"]  # the upload, then the create's gate
        sent = next(iter(emu.state.jobs.values())).echo["outputConfig"]["gcsDestination"]["outputUriPrefix"]
        assert sent == f"{STAGING}/shard-a/output"
        got = await ended(client, emu, job.name)
        info = got.batch
        assert info.state is BatchState.SUCCEEDED and info.stats.succeeded == 7 and info.stats.failed == 0
        assert info.responses_file is not None and info.responses_file.startswith(f"{STAGING}/shard-a/output/")
        lines, stream = await collect(client, info.responses_file)
        assert sorted(line.key or "" for line in lines) == [k for k, _ in items(*["x"] * 7)]
        assert all(line.kind is LineKind.IMAGE and line.image and line.image.data for line in lines)
        first = lines[0].image
        assert first is not None and first.data is not None and read_png(first.data).width == 1024
        assert [c.kind for c in stream.calls] == ["download"] * 4  # the listing, then one record per file
        assert [c.outcome for c in stream.calls[1:]] == ["ok"] * 3 and stream.lines_read == 7
        for name in (file_name, info.responses_file):
            done = await client.delete_file(name)
            assert isinstance(done, Ok), done
    assert objects_under(emu, "batches/") == []  # nothing left under the staging prefix
    assert emu.stats.batch_rows_billed == 7


async def test_failed_lines_refusals_and_a_line_without_its_key_are_judged_by_the_echo(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=2, batch_line_fail_rate=0.3,
                             batch_line_refusal_rate=0.3, seed=11)  # fmt: skip
    async with opened(emu, tmp_path) as client:
        _, made = await staged_job(client, tmp_path, "shard-b", 20)
        info = (await ended(client, emu, made.batch.name)).batch
        assert info.responses_file is not None
        # a line whose top-level key was not echoed: matched by its request's labels
        bucket = emu.state.store.buckets[BUCKET]
        first = next(n for n in sorted(bucket) if n.endswith(".jsonl") and "/output/" in n)
        stored = bucket[first]
        head, _, rest = stored.data.partition(b"\n")
        line = json.loads(head)
        key = line.pop("key")
        assert line["request"]["labels"] == {KEY_LABEL: key}
        emu.state.store.put(BUCKET, first, json.dumps(line).encode() + b"\n" + rest, "application/jsonl", 0.0)
        lines, _ = await collect(client, info.responses_file)
    kinds = {k: [line for line in lines if line.kind is k] for k in LineKind}
    stats = emu.stats
    assert len(lines) == 20 and key in {line.key for line in lines}
    assert len(kinds[LineKind.IMAGE]) == stats.batch_rows_billed
    assert len(kinds[LineKind.REFUSED]) == stats.batch_rows_refused > 0
    assert len(kinds[LineKind.FAILED]) == stats.batch_rows_failed > 0 and not kinds[LineKind.MALFORMED]
    assert all("INTERNAL" in line.reason and line.error_code == 13 for line in kinds[LineKind.FAILED])
    assert all("IMAGE_SAFETY" in line.reason for line in kinds[LineKind.REFUSED])
    assert info.stats.succeeded == stats.batch_rows_billed + stats.batch_rows_refused  # a refusal has a response
    assert info.stats.failed == stats.batch_rows_failed


async def test_the_create_is_classified_as_the_gemini_create(start_vertex: StartVertex, tmp_path: Path) -> None:
    emu = await start_vertex(batch_latency=QUICK)
    gate = RecordingGate()
    async with opened(emu, tmp_path, gate) as client:
        path = tmp_path / "in.jsonl"
        client.write_shard(path, items("a red mug"))
        up = await client.upload(path, "shard-c")
        assert isinstance(up, Uploaded)
        emu.configure(batch_create_503_rate=1.0)  # made nothing, but a 5xx proves nothing: list to find out
        gate.events.clear()
        unknown = await client.create(LITE, up.file_name, "shard-c", before_send=Sent(gate))
        assert isinstance(unknown, CreateUnknown) and "503" in unknown.message, unknown
        assert gate.events == ["acquire", "before_send", "answered"]
        emu.configure(batch_create_503_rate=0.0, batch_create_gateway_rate=1.0)  # made, then an HTML 502
        assert isinstance(await client.create(LITE, up.file_name, "shard-c", before_send=_nothing), CreateUnknown)
        emu.configure(batch_create_gateway_rate=0.0)
        bad = await client.create("no-such-model", up.file_name, "shard-c", before_send=_nothing)
        assert isinstance(bad, NotCreated) and not bad.retryable and "404" in bad.message, bad

        async def refuse() -> None:
            raise RuntimeError("the intent could not be committed")

        with pytest.raises(RuntimeError):
            await client.create(LITE, up.file_name, "shard-c", before_send=refuse)
    assert emu.stats.jobs_created == 1  # only the gateway's: nothing else made, nothing sent after the refusal


async def test_a_create_that_cannot_connect_is_not_created_and_a_denied_project_names_itself(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex()
    async with opened(emu, tmp_path) as client:
        path = tmp_path / "in.jsonl"
        client.write_shard(path, items("a red mug"))
        up = await client.upload(path, "shard-d")
        assert isinstance(up, Uploaded)
        client.settings = _with(client.settings, host=f"http://127.0.0.1:{_closed_loopback_port()}")
        closed = await client.create(LITE, up.file_name, "shard-d", before_send=_nothing)
        assert isinstance(closed, NotCreated) and closed.retryable, closed
        listing = await client.find_by_display_name("shard-d")
        assert isinstance(listing, ListingIncomplete)  # a listing that failed is never proof of absence
        client.settings = _with(client.settings, host=emu.origin, project="someone-elses-project")
        denied = await client.create(LITE, up.file_name, "shard-d", before_send=_nothing)
        assert isinstance(denied, AuthRejected) and "PERMISSION_DENIED" in denied.message, denied
        assert "someone-elses-project" in denied.message
    assert emu.stats.jobs_created == 0


def _with(settings: VertexBatchSettings, **changed: Any) -> VertexBatchSettings:
    from dataclasses import replace

    return replace(settings, **changed)


# --- listings ------------------------------------------------------------------------------------------------


async def test_find_by_display_name_pages_through_and_puts_the_newest_first(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(batch_latency=QUICK)
    async with opened(emu, tmp_path) as client:
        assert isinstance(await client.find_by_display_name("shard-e"), Absent)  # the empty listing is `{}`
        path = tmp_path / "in.jsonl"
        client.write_shard(path, items("a red mug"))
        up = await client.upload(path, "shard-e")
        assert isinstance(up, Uploaded)
        names = []
        for _ in range(3):  # created three times: a doubled create, as a lost reply could make
            made = await client.create(LITE, up.file_name, "shard-e", before_send=_nothing)
            assert isinstance(made, Created)
            names.append(made.batch.name)
            emu.advance(0.5)
        await client.create(LITE, up.file_name, "shard-other", before_send=_nothing)
        found = await client.find_by_display_name("shard-e", page_size=1)
        assert isinstance(found, Found), found
        assert [b.name for b in found.batches] == names[::-1]
        assert len(found.calls) == 3 and all(c.kind == "batch_list" for c in found.calls)
        emu.configure(batch_list_lag_s=60.0)
        late = await client.create(LITE, up.file_name, "shard-f", before_send=_nothing)
        assert isinstance(late, Created) and isinstance(await client.find_by_display_name("shard-f"), Absent)


# --- results and cleanup -------------------------------------------------------------------------------------


async def test_a_cancelled_job_keeps_its_finished_rows_and_an_ended_one_refuses_a_cancel(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(batch_latency=Latency("fixed", 100.0), batch_cancel_s=2.0)
    async with opened(emu, tmp_path) as client:
        _, made = await staged_job(client, tmp_path, "shard-g", 10)
        emu.advance(55.0)  # about half its rows done
        assert isinstance(await client.cancel(made.batch.name), Ok)
        got = await client.get(made.batch.name)
        assert isinstance(got, Got) and got.batch.state is BatchState.RUNNING  # CANCELLING: not ended yet
        info = (await ended(client, emu, made.batch.name, 3.0)).batch
        assert info.state is BatchState.CANCELLED and 0 < info.stats.succeeded < 10
        assert info.stats.pending == 10 - info.stats.succeeded  # incompleteCount, once ended
        assert info.responses_file is not None
        lines, _ = await collect(client, info.responses_file)
        assert len(lines) == info.stats.succeeded == emu.stats.batch_rows_billed
        assert isinstance(await client.cancel(made.batch.name), Refused)  # FAILED_PRECONDITION: it has ended
        assert isinstance(await client.delete_batch(made.batch.name), Ok)
        assert isinstance(await client.get(made.batch.name), Gone)


async def test_an_oversized_line_is_malformed_and_named_and_an_empty_folder_has_no_lines(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex()
    async with opened(emu, tmp_path) as client:
        client.settings = _with(client.settings, max_reply_bytes=2_000)
        key = "f" * 32
        big = json.dumps({"key": key, "request": {}, "response": {"x": "y" * 5_000}, "status": ""})
        small = json.dumps({"key": "0" * 32, "status": 'Bad Request: {"error": {"code": 400, "message": "no", '
                            '"status": "INVALID_ARGUMENT"}}'})  # fmt: skip
        emu.state.store.put(BUCKET, "batches/s/output/p/predictions-1.jsonl", f"{big}\n{small}\n".encode(),
                            "application/jsonl", 0.0)  # fmt: skip
        lines, _ = await collect(client, f"{STAGING}/s/output/p")
        assert [(line.key, line.kind) for line in lines] == [(key, LineKind.MALFORMED), ("0" * 32, LineKind.FAILED)]
        assert lines[1].error_code == 3 and "INVALID_ARGUMENT" in lines[1].reason
        empty, stream = await collect(client, f"{STAGING}/nothing-here")
        assert empty == [] and len(stream.calls) == 1
        assert isinstance(await client.delete_file(f"{STAGING}/s/output/p"), Ok)
        assert objects_under(emu, "batches/s/") == []


# --- settings ------------------------------------------------------------------------------------------------


def test_express_mode_and_a_missing_staging_place_are_refused_with_the_fix(tmp_path: Path) -> None:
    env = {"GOOGLE_API_KEY": "AIza-express"}
    online, credential = vertex_credential(env, vertex_settings(env))
    assert isinstance(credential, ApiKey)
    with pytest.raises(ConfigError) as express:
        batch_settings(online, credential, STAGING, env)
    assert express.value.message == NEEDS_PROJECT and "AIza" not in express.value.message
    project = {"GOOGLE_CLOUD_PROJECT": "p", "GOOGLE_API_KEY": "k"}
    with pytest.raises(ConfigError) as missing:
        batch_settings(vertex_settings(project), credential, None, project)
    assert missing.value.message == NEEDS_STAGING and "--staging" in NEEDS_STAGING


async def test_a_staging_place_that_refuses_writes_stops_the_client_before_anything_is_sent(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex()

    async def forbidden(request: web.Request) -> web.Response:
        error = {"code": 403, "message": "batcher@emulator-project may not write to this bucket"}
        return web.json_response({"error": error}, status=403)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forbidden)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = make(emu, tmp_path, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(DestinationError) as caught:
            async with client:
                pass
    finally:
        await storage.close_all()
        await runner.cleanup()
    message = caught.value.message
    assert f"gs://{BUCKET}" in message and "batch: staging" in message and "--staging" in message, message
    assert emu.stats.jobs_created == 0 and emu.stats.objects_written == 0


async def test_a_refused_credential_stops_the_client_on_entering(start_vertex: StartVertex, tmp_path: Path) -> None:
    emu = await start_vertex()
    client = make(emu, tmp_path)
    emu.state.tokens._keys.clear()  # the key file's account is no longer known to the token endpoint
    with pytest.raises(AuthError) as caught:
        async with client:
            pass
    assert "GOOGLE_APPLICATION_CREDENTIALS" in caught.value.message and emu.stats.tokens_refused == 1


async def test_a_partially_succeeded_job_is_collected_as_succeeded_with_its_unrun_rows_pending(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(batch_latency=QUICK, batch_partial_rate=1.0)
    async with opened(emu, tmp_path) as client:
        _, made = await staged_job(client, tmp_path, "shard-p", 10)
        info = (await ended(client, emu, made.batch.name)).batch
        assert info.state is BatchState.SUCCEEDED  # JOB_STATE_PARTIALLY_SUCCEEDED: its output is read as is
        assert (info.stats.succeeded, info.stats.pending) == (9, 1)  # the last tenth never ran: incompleteCount
        assert info.responses_file is not None
        lines, _ = await collect(client, info.responses_file)
    assert len(lines) == 9 == emu.stats.batch_rows_billed
    assert emu.stats.jobs_by_state == {"JOB_STATE_PARTIALLY_SUCCEEDED": 1}
