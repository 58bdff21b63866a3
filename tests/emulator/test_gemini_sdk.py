"""The official google-genai SDK, unchanged, against the Gemini emulator (its base URL is all that differs).

The SDK's client is synchronous (httpx), so it runs in a worker thread while the emulator serves on the
test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from google import genai
from google.genai import errors, types

from .emu_helpers import LITE, read_png
from .gemini_helpers import StartGemini, jsonl


def _client(origin: str, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=origin))


def _generate(client: genai.Client, prompt: str) -> types.GenerateContentResponse:
    return client.models.generate_content(
        model=LITE,
        contents=prompt,
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="16:9")
        ),
    )


async def test_the_sdk_generates_an_image(start_gemini: StartGemini) -> None:
    emu = await start_gemini(image_bytes=1_200_000)
    reply = await asyncio.to_thread(_generate, _client(emu.origin, emu.api_key), "Studio shot of a red mug")
    assert reply.candidates and reply.candidates[0].finish_reason == types.FinishReason.STOP
    content = reply.candidates[0].content
    assert content is not None and content.parts
    inline = content.parts[0].inline_data
    assert inline is not None and inline.mime_type == "image/png" and inline.data is not None
    png = read_png(inline.data)
    assert (png.width, png.height) == (1376, 768)
    assert reply.usage_metadata is not None and reply.usage_metadata.candidates_token_count == 1290
    assert emu.stats.images_billed == 1
    assert emu.stats.requests_by_version == {"v1": 1}  # google-genai 3.x calls v1


async def test_the_sdk_sees_quota_errors_with_their_details(start_gemini: StartGemini) -> None:
    emu = await start_gemini(daily_limit=1)
    client = _client(emu.origin, emu.api_key)
    await asyncio.to_thread(_generate, client, "first")
    with pytest.raises(errors.ClientError) as caught:
        await asyncio.to_thread(_generate, client, "second")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    details = caught.value.details["error"]["details"]
    quota = next(d for d in details if d["@type"].endswith("QuotaFailure"))
    assert quota["violations"][0]["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"


async def test_the_sdk_sees_a_wrong_key(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    with pytest.raises(errors.ClientError) as caught:
        await asyncio.to_thread(_generate, _client(emu.origin, "wrong"), "x")
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"


async def test_the_sdk_runs_a_batch_from_upload_to_results(start_gemini: StartGemini) -> None:
    emu = await start_gemini(batch_latency="fixed:300")
    client = _client(emu.origin, emu.api_key)
    data = jsonl("sdk one", "sdk two", ratio="16:9")
    config = types.UploadFileConfig(display_name="sdk input", mime_type="application/jsonl")
    uploaded = await asyncio.to_thread(client.files.upload, file=io.BytesIO(data), config=config)
    assert uploaded.name and uploaded.size_bytes == len(data) and uploaded.state == types.FileState.ACTIVE
    job = await asyncio.to_thread(
        client.batches.create, model=LITE, src=uploaded.name, config={"display_name": "sdk job"}
    )
    assert job.name and job.state == types.JobState.JOB_STATE_PENDING and job.display_name == "sdk job"
    other = await asyncio.to_thread(client.batches.create, model=LITE, src=uploaded.name)
    assert other.name and other.name != job.name
    await asyncio.to_thread(client.batches.cancel, name=other.name)
    listed = await asyncio.to_thread(lambda: [b.name for b in client.batches.list(config={"page_size": 1})])
    assert listed == [other.name, job.name]  # both pages, newest first
    emu.advance(300)
    done = await asyncio.to_thread(client.batches.get, name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest and done.dest.file_name
    cancelled = await asyncio.to_thread(client.batches.get, name=other.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    results = await asyncio.to_thread(client.files.download, file=done.dest.file_name)
    lines = [json.loads(line) for line in results.splitlines()]
    assert [line["key"] for line in lines] == ["sdk one", "sdk two"]
    image = base64.b64decode(lines[0]["response"]["candidates"][0]["content"]["parts"][0]["inlineData"]["data"])
    assert (read_png(image).width, read_png(image).height) == (1376, 768)
    await asyncio.to_thread(client.files.delete, name=uploaded.name)
    stats = emu.stats
    assert stats.files_uploaded == 1 and stats.files_deleted == 1 and stats.batches_created == 2
    assert stats.batch_lines_billed == 2 and stats.requests_by_version.keys() == {"v1"}
