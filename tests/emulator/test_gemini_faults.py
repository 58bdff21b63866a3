"""Faults of the Gemini emulator at probability 1, the error body's shape, auth and the quotas."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .gemini_helpers import MakeGemini, detail, image_bytes, image_request

PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel"
PER_DAY = "GenerateRequestsPerDayPerProjectPerModel"


async def test_no_key_is_permission_denied(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    reply = await api.generate(headers={})
    assert reply.status == 403 and reply.body["error"]["status"] == "PERMISSION_DENIED"
    assert api.emu.stats.requests == {"generate": {403: 1}}


async def test_a_wrong_key_is_a_400_with_api_key_invalid(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    reply = await api.generate(headers={"x-goog-api-key": "wrong"})
    error = reply.body["error"]
    assert reply.status == 400 and error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert detail(reply.body, "ErrorInfo")["reason"] == "API_KEY_INVALID"
    assert "API key not valid" in error["message"]


async def test_the_key_may_come_as_a_query_parameter(make_gemini: MakeGemini) -> None:
    api = await make_gemini()
    reply = await api.generate(headers={}, params={"key": api.emu.api_key})
    assert reply.status == 200


@pytest.mark.parametrize(
    ("knob", "code", "status", "words"),
    [
        ("error_500_rate", 500, "INTERNAL", "internal error"),
        ("error_503_rate", 503, "UNAVAILABLE", "The model is overloaded"),
        ("error_504_rate", 504, "DEADLINE_EXCEEDED", "Deadline expired"),
    ],
)
async def test_transient_errors_bill_nothing(
    make_gemini: MakeGemini, knob: str, code: int, status: str, words: str
) -> None:
    api = await make_gemini(**{knob: 1.0})
    reply = await api.generate()
    assert reply.status == code, reply.body
    assert reply.body["error"]["code"] == code and reply.body["error"]["status"] == status
    assert words in reply.body["error"]["message"]
    assert api.emu.stats.images_billed == 0 and api.emu.stats.requests == {"generate": {code: 1}}


async def test_a_dropped_connection_does_nothing(make_gemini: MakeGemini) -> None:
    api = await make_gemini(drop_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.generate()
    stats = api.emu.stats
    assert stats.dropped == 1 and stats.images_billed == 0 and stats.requests == {"generate": {0: 1}}


async def test_a_lost_reply_was_billed(make_gemini: MakeGemini) -> None:
    api = await make_gemini(lost_reply_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.generate(image_request("lost one"))
    stats = api.emu.stats
    assert stats.lost_replies == 1 and stats.images_billed == 1 and stats.billed_by_prompt == {"lost one": 1}
    api.emu.configure(lost_reply_rate=0.0)
    assert (await api.generate(image_request("lost one"))).status == 200
    assert api.emu.stats.billed_by_prompt == {"lost one": 2}  # a retry is billed again


async def test_a_gateway_502_is_html_and_was_billed(make_gemini: MakeGemini) -> None:
    api = await make_gemini(gateway_502_rate=1.0)
    url = f"{api.emu.origin}/v1beta/models/gemini-3.1-flash-lite-image:generateContent"
    async with api.session.post(url, json=image_request("behind the gateway"), headers=api.headers) as resp:
        assert resp.status == 502 and resp.content_type == "text/html"
        assert "That's an error" in await resp.text()
    stats = api.emu.stats
    assert stats.gateway_errors == 1 and stats.images_billed == 1 and stats.requests == {"generate": {502: 1}}


async def test_a_refusal_has_no_image_and_sticks_to_its_prompt(make_gemini: MakeGemini) -> None:
    api = await make_gemini(refusal_rate=1.0, refusal_reason="IMAGE_PROHIBITED_CONTENT")
    reply = await api.generate(image_request("refused"))
    assert reply.status == 200
    candidate = reply.body["candidates"][0]
    assert candidate["finishReason"] == "IMAGE_PROHIBITED_CONTENT" and "content" not in candidate
    assert "candidatesTokenCount" not in reply.body["usageMetadata"]
    api.emu.configure(refusal_rate=0.0)
    again = await api.generate(image_request("refused"))
    assert again.body["candidates"][0]["finishReason"] == "IMAGE_PROHIBITED_CONTENT"
    other = await api.generate(image_request("fine"))
    assert image_bytes(other.body)
    stats = api.emu.stats
    assert stats.refusals == 2 and stats.refusals_by_reason == {"IMAGE_PROHIBITED_CONTENT": 2}
    assert stats.images_billed == 1 and stats.billed_by_prompt == {"fine": 1}


async def test_refusals_can_be_drawn_afresh(make_gemini: MakeGemini) -> None:
    api = await make_gemini(refusal_rate=1.0, sticky_refusals=False)
    assert "content" not in (await api.generate()).body["candidates"][0]
    api.emu.configure(refusal_rate=0.0)
    assert image_bytes((await api.generate()).body)


async def test_a_blocked_prompt_has_no_candidates(make_gemini: MakeGemini) -> None:
    api = await make_gemini(block_rate=1.0, block_reason="BLOCKLIST")
    reply = await api.generate()
    assert reply.status == 200 and "candidates" not in reply.body
    assert reply.body["promptFeedback"] == {"blockReason": "BLOCKLIST"}
    assert api.emu.stats.blocked == 1 and api.emu.stats.images_billed == 0


async def test_a_per_minute_429_carries_retry_info_and_the_quota(make_gemini: MakeGemini) -> None:
    api = await make_gemini(quota_429_rate=1.0, minute_limit=10)
    reply = await api.generate()
    assert reply.status == 429 and reply.body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert detail(reply.body, "RetryInfo")["retryDelay"] == "47s"
    violation = detail(reply.body, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == PER_MINUTE and violation["quotaValue"] == "10"
    assert violation["quotaDimensions"]["model"] == "gemini-3.1-flash-lite-image"
    stats = api.emu.stats
    assert stats.rate_limited == 1 and stats.minute_quota_429s == 1 and stats.images_billed == 0


async def test_the_account_rate_limit_answers_the_per_minute_429(make_gemini: MakeGemini) -> None:
    api = await make_gemini(rate_limit=0.5, burst=1)
    assert (await api.generate()).status == 200
    limited = await api.generate()
    assert limited.status == 429
    assert detail(limited.body, "RetryInfo")["retryDelay"] == "2s"
    assert detail(limited.body, "QuotaFailure")["violations"][0]["quotaId"] == PER_MINUTE
    api.emu.advance(2)
    assert (await api.generate()).status == 200
    assert api.emu.stats.minute_quota_429s == 1


async def test_the_daily_quota_refuses_until_the_day_resets(make_gemini: MakeGemini) -> None:
    api = await make_gemini(daily_limit=2, day_s=1000)
    assert [(await api.generate(image_request(f"d{i}"))).status for i in range(2)] == [200, 200]
    refused = await api.generate(image_request("d2"))
    assert refused.status == 429
    assert detail(refused.body, "QuotaFailure")["violations"][0]["quotaId"] == PER_DAY
    delay = int(detail(refused.body, "RetryInfo")["retryDelay"].removesuffix("s"))
    assert 990 <= delay <= 1000  # until the quota day ends
    api.emu.advance(1000)
    assert (await api.generate(image_request("d2"))).status == 200
    stats = api.emu.stats
    assert stats.daily_refusals == 1 and stats.images_billed == 3 and stats.minute_quota_429s == 0


async def test_the_spending_cap_refuses_every_generation_once_reached(make_gemini: MakeGemini) -> None:
    api = await make_gemini(spend_cap_images=2)
    assert [(await api.generate(image_request(f"s{i}"))).status for i in range(2)] == [200, 200]
    refused = await api.generate(image_request("s2"))
    error = refused.body["error"]
    assert (refused.status, error["status"]) == (429, "RESOURCE_EXHAUSTED") and "spending cap" in error["message"]
    assert not any("QuotaFailure" in d["@type"] or "RetryInfo" in d["@type"] for d in error["details"])
    api.emu.advance(86_400)  # no wait brings it back: only a higher cap
    assert (await api.generate(image_request("s3"))).status == 429
    api.emu.configure(spend_cap_images=10)
    assert (await api.generate(image_request("s3"))).status == 200
    assert api.emu.stats.images_billed == 3


async def test_a_slow_reply_waits_on_the_clock(make_gemini: MakeGemini) -> None:
    api = await make_gemini(slow_rate=1.0, slow_s=30)
    pending = asyncio.create_task(api.generate())
    while api.emu.state.in_flight == 0:
        await asyncio.sleep(0.001)
    await api.admin("GET", "config")  # loop turns in which an early answer would show
    assert not pending.done()
    api.emu.advance(30)
    assert (await pending).status == 200


def test_knobs_are_checked() -> None:
    from batcher.emulator import GeminiConfig

    with pytest.raises(ValueError, match="refusal_rate"):
        GeminiConfig(refusal_rate=2.0)
    with pytest.raises(ValueError, match="refusal_reason"):
        GeminiConfig(refusal_reason="NOPE")
    with pytest.raises(ValueError, match="daily_limit"):
        GeminiConfig(daily_limit=0)
    assert GeminiConfig().replace(latency=3, daily_limit=None).latency.a == 3.0
