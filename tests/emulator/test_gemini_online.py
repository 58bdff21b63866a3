"""generateContent on the Gemini emulator: images of the right size, both API versions, spellings, validation."""

from __future__ import annotations

import asyncio

import pytest

from batcher.emulator.gemini.images import noisy_png

from .emu_helpers import CLASSIC, FLASH, LITE, read_png
from .gemini_helpers import MakeGemini, image_bytes, image_request


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_an_image_in_the_reply_under_both_versions(make_gemini: MakeGemini, version: str) -> None:
    api = await make_gemini()
    reply = await api.generate(image_request("a red mug", ratio="16:9"), version=version)
    assert reply.status == 200, reply.body
    png = read_png(image_bytes(reply.body))
    assert (png.width, png.height) == (1376, 768)
    candidate = reply.body["candidates"][0]
    assert candidate["finishReason"] == "STOP" and candidate["content"]["role"] == "model"
    usage = reply.body["usageMetadata"]
    assert usage["candidatesTokenCount"] == 1290
    assert usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": 1290}]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + 1290
    assert reply.body["modelVersion"] == LITE and reply.body["responseId"]
    stats = api.emu.stats
    assert stats.images_billed == 1 and stats.billed_by_prompt == {"a red mug": 1}
    assert stats.requests_by_version == {version: 1}


@pytest.mark.parametrize(
    ("model", "ratio", "size", "pixels"),
    [
        (LITE, "8:1", None, (3072, 384)),
        (CLASSIC, "16:9", "1K", (1344, 768)),
        (CLASSIC, "21:9", None, (1536, 672)),
        (FLASH, "2:3", "2K", (1696, 2528)),
        (FLASH, "1:1", "0.5K", (512, 512)),
    ],
)
async def test_pixel_sizes_follow_model_ratio_and_size(
    make_gemini: MakeGemini, model: str, ratio: str, size: str | None, pixels: tuple[int, int]
) -> None:
    api = await make_gemini()
    reply = await api.generate(image_request(ratio=ratio, size=size), model=model)
    assert reply.status == 200, reply.body
    png = read_png(image_bytes(reply.body))
    assert (png.width, png.height) == pixels


async def test_snake_case_fields_are_accepted(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    body = {
        "contents": [{"parts": [{"text": "snake"}]}],
        "generation_config": {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "9:16"}},
    }
    reply = await api.generate(body)
    assert reply.status == 200, reply.body
    png = read_png(image_bytes(reply.body))
    assert (png.width, png.height) == (768, 1376)


async def test_text_and_image_modalities_add_a_text_part(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    reply = await api.generate(image_request(modalities=["TEXT", "IMAGE"]))
    parts = reply.body["candidates"][0]["content"]["parts"]
    assert [next(iter(p)) for p in parts] == ["text", "inlineData"]


async def test_input_images_are_decoded_and_counted_as_prompt_tokens(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    plain = await api.generate(image_request("edit this"))
    edited = await api.generate(image_request("edit this", images=(b"\x89PNG\r\n\x1a\n" + bytes(100),) * 2))
    assert edited.status == 200, edited.body
    assert edited.body["usageMetadata"]["promptTokenCount"] == plain.body["usageMetadata"]["promptTokenCount"] + 516
    assert api.emu.stats.input_images == 2  # counted for the billed generation that carried them


async def test_realistic_image_bytes_give_valid_pngs_of_about_that_size(make_gemini: MakeGemini) -> None:
    api = await make_gemini(image_bytes=1_500_000)
    reply = await api.generate(image_request(ratio="16:9"))
    data = image_bytes(reply.body)
    assert 1_450_000 <= len(data) <= 1_550_000
    png = read_png(data)
    assert (png.width, png.height, png.colour_type) == (1376, 768, 2)


def test_noisy_png_never_exceeds_its_raw_pixels() -> None:
    small = noisy_png(1, 10, 10, 10**9)
    assert len(read_png(small).pixels) == 10 * (1 + 30) and len(small) < 1000


@pytest.mark.parametrize(
    ("body", "model", "needle"),
    [
        (image_request(ratio="16x9"), LITE, "aspectRatio"),
        (image_request(ratio="8:1"), CLASSIC, "aspectRatio"),
        (image_request(size="2K"), LITE, "imageSize"),
        (image_request(size="1k"), FLASH, "imageSize"),
        (image_request(modalities=["TEXT"]), LITE, "IMAGE"),
        (image_request(modalities=["AUDIO", "IMAGE"]), LITE, "AUDIO"),
        ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}, LITE, "text"),
        ({"contents": []}, LITE, "contents"),
        (
            {"contents": [{"parts": [{"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]},
            LITE,
            "Base64",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}, {"inlineData": {"mimeType": "text/html", "data": "AAAA"}}]}]},
            LITE,
            "mimeType",
        ),
        ({"contents": [{"parts": [{"text": "x"}, {"fileData": {"fileUri": "files/nope"}}]}]}, LITE, "files/nope"),
    ],
)
async def test_invalid_requests_are_invalid_argument(
    make_gemini: MakeGemini, body: dict[str, object], model: str, needle: str
) -> None:
    api = await make_gemini()
    reply = await api.generate(body, model=model)
    assert reply.status == 400, reply.body
    assert reply.body["error"]["status"] == "INVALID_ARGUMENT" and reply.body["error"]["code"] == 400
    assert needle in reply.body["error"]["message"]
    assert api.emu.stats.images_billed == 0


async def test_an_oversized_input_image_is_refused(make_gemini: MakeGemini) -> None:
    api = await make_gemini(max_image_bytes=1000)
    reply = await api.generate(image_request(images=(bytes(1001),)))
    assert reply.status == 400 and "larger than 1000 bytes" in reply.body["error"]["message"]
    assert (await api.generate(image_request(images=(bytes(1000),)))).status == 200


async def test_an_unknown_model_is_not_found(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    reply = await api.generate(model="gemini-9-ultra")
    assert reply.status == 404 and reply.body["error"]["status"] == "NOT_FOUND"
    assert "models/gemini-9-ultra is not found for API version v1beta" in reply.body["error"]["message"]


async def test_the_reply_waits_for_the_generation_on_the_emulators_clock(make_gemini: MakeGemini) -> None:
    api = await make_gemini(latency="fixed:600")
    pending = asyncio.create_task(api.generate(image_request("slow one")))
    while api.emu.state.in_flight == 0:  # the request has reached the handler
        await asyncio.sleep(0.001)
    api.emu.advance(599)
    await api.admin("GET", "config")  # a round trip: loop turns in which an early answer would show
    assert not pending.done()
    api.emu.advance(1)
    reply = await pending
    assert reply.status == 200 and api.emu.stats.images_billed == 1


async def test_peak_concurrency_counts_requests_waiting_together(make_gemini: MakeGemini) -> None:
    api = await make_gemini(latency="fixed:60")
    pending = [asyncio.create_task(api.generate(image_request(f"p{i}"))) for i in range(3)]
    while api.emu.state.in_flight < 3:
        await asyncio.sleep(0.001)
    api.emu.advance(60)
    assert [r.status for r in await asyncio.gather(*pending)] == [200, 200, 200]
    assert api.emu.stats.peak_concurrent_requests == 3


async def test_admin_config_stats_advance_and_reset(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    assert (await api.generate()).status == 200
    changed = await api.admin("POST", "config", json={"refusal_rate": 1.0, "latency": "fixed:2"})
    assert changed.status == 200 and changed.body["refusal_rate"] == 1.0 and changed.body["latency"] == "fixed:2"
    assert (await api.admin("POST", "config", json={"port": 1})).status == 400
    assert (await api.admin("POST", "config", json={"nope": 1})).status == 400
    stats = await api.admin("GET", "stats")
    assert stats.body["images_billed"] == 1 and stats.body["requests"] == {"generate": {"200": 1}}
    assert stats.body["cost_usd"] == "0.067"
    before = api.emu.clock.now()
    assert (await api.admin("POST", "advance", params={"seconds": "3600"})).status == 200
    assert api.emu.clock.now() - before >= 3600
    assert (await api.admin("POST", "reset")).status == 200
    assert api.emu.stats.images_billed == 0
    assert (await api.admin("GET", "config")).body["refusal_rate"] == 1.0
