"""The official google-genai SDK with `vertexai=True`, unchanged, against the Vertex emulator: its base URL and
a service-account key file whose token_uri is the emulator are all that differ from Google's service.

The SDK's client is synchronous (httpx, and google-auth's blocking refresh), so it runs in a worker thread while
the emulator serves on the test's loop.
"""

from __future__ import annotations

import asyncio

from google import genai
from google.genai import types

from batcher.emulator.vertex.server import VertexEmulator

from .emu_helpers import LITE, read_png
from .vertex_helpers import StartVertex, credentials, rows_jsonl


def _client(emu: VertexEmulator) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=emu.project,
        location="global",
        credentials=credentials(emu.new_key_file()),
        http_options=types.HttpOptions(base_url=emu.origin),
    )


def _generate(client: genai.Client) -> types.GenerateContentResponse:
    return client.models.generate_content(
        model=LITE,
        contents="Studio shot of a red mug",
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="16:9")
        ),
    )


async def test_the_sdk_generates_an_image_through_vertex(start_vertex: StartVertex) -> None:
    emu = await start_vertex()
    reply = await asyncio.to_thread(_generate, _client(emu))
    assert reply.candidates and reply.candidates[0].finish_reason == types.FinishReason.STOP
    content = reply.candidates[0].content
    assert content is not None and content.parts
    inline = content.parts[0].inline_data
    assert inline is not None and inline.data is not None
    assert (read_png(inline.data).width, read_png(inline.data).height) == (1376, 768)
    assert reply.create_time is not None
    stats = emu.stats
    assert (stats.tokens_issued, stats.images_billed) == (1, 1)
    assert stats.billed_by_project == {emu.project_number: 1}


def _batch_calls(client: genai.Client) -> dict[str, object]:
    job = client.batches.create(
        model=LITE,
        src="gs://bkt/stage/in.jsonl",
        config=types.CreateBatchJobConfig(display_name="sdk job", dest="gs://bkt/out"),
    )
    assert job.name is not None
    got = client.batches.get(name=job.name)
    listed = list(client.batches.list(config=types.ListBatchJobsConfig(page_size=1, filter='display_name="sdk job"')))
    client.batches.cancel(name=job.name)
    after = client.batches.get(name=job.name)
    return {"job": job, "got": got, "listed": listed, "after": after}


async def test_the_sdk_creates_gets_lists_and_cancels_a_batch_prediction_job(start_vertex: StartVertex) -> None:
    emu = await start_vertex(batch_latency="fixed:600")
    client = _client(emu)
    emu.state.store.put("bkt", "stage/in.jsonl", rows_jsonl("one", "two"), "application/jsonl", 0.0)
    seen = await asyncio.to_thread(_batch_calls, client)
    job, got, after = seen["job"], seen["got"], seen["after"]
    assert isinstance(job, types.BatchJob) and isinstance(got, types.BatchJob) and isinstance(after, types.BatchJob)
    assert job.name and job.name.startswith(f"projects/{emu.project_number}/locations/global/batchPredictionJobs/")
    assert job.state == types.JobState.JOB_STATE_PENDING and job.display_name == "sdk job"
    assert job.model == f"publishers/google/models/{LITE}"
    assert got.name == job.name and got.src is not None and got.src.gcs_uri == ["gs://bkt/stage/in.jsonl"]
    listed = seen["listed"]
    assert isinstance(listed, list) and [j.name for j in listed] == [job.name]
    assert after.state == types.JobState.JOB_STATE_CANCELLED
    assert emu.stats.jobs_created == 1 and emu.stats.jobs_by_state == {"JOB_STATE_CANCELLED": 1}
