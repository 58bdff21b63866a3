"""Online generateContent on the Vertex emulator: replies as Gemini's plus createTime, refusals, Dynamic Shared
Quota 429s (drawn, or from a capacity per second on the emulator's clock), faults, billing and administration."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from .gemini_helpers import image_request
from .vertex_helpers import MakeVertex, VertexApi


async def test_refusals_and_blocks_are_not_billed(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(refusal_rate=1.0, refusal_reason="IMAGE_PROHIBITED_CONTENT")
    refused = await vx.generate(image_request("no"))
    assert refused.status == 200 and refused.body["candidates"][0]["finishReason"] == "IMAGE_PROHIBITED_CONTENT"
    assert "content" not in refused.body["candidates"][0] and "createTime" in refused.body
    vx.emu.configure(refusal_rate=0.0, block_rate=1.0)
    blocked = await vx.generate(image_request("also no"))
    assert blocked.body["promptFeedback"] == {"blockReason": "PROHIBITED_CONTENT"} and "candidates" not in blocked.body
    again = await vx.generate(image_request("no"))  # a refused prompt stays refused
    assert again.body["candidates"][0]["finishReason"] == "IMAGE_PROHIBITED_CONTENT"
    stats = vx.emu.stats
    assert (stats.refusals, stats.blocked, stats.images_billed) == (2, 1, 0)


async def test_dynamic_shared_quota_429_carries_no_retry_hint(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(dsq_429_rate=1.0)
    reply = await vx.generate()
    assert reply.status == 429
    error = reply.body["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and error["message"].startswith(
        "Resource exhausted, please try again later"
    )
    assert "details" not in error and "Retry-After" not in reply.headers
    assert (vx.emu.stats.dsq_429s, vx.emu.stats.images_billed) == (1, 0)


async def test_dynamic_shared_quota_capacity_per_second(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(rate_limit=2.0, burst=2.0)
    statuses = [(await vx.generate()).status for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    vx.emu.advance(1.0)  # two more tokens on the emulator's clock
    assert [(await vx.generate()).status for _ in range(3)] == [200, 200, 429]
    assert (vx.emu.stats.images_billed, vx.emu.stats.dsq_429s) == (4, 3)


async def test_server_errors_bill_nothing_and_a_lost_reply_is_billed(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(error_503_rate=1.0)
    assert (await vx.generate()).status == 503
    vx.emu.configure(error_503_rate=0.0, error_500_rate=1.0)
    assert (await vx.generate()).status == 500
    vx.emu.configure(error_500_rate=0.0, lost_reply_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await vx.generate()
    stats = vx.emu.stats
    assert (stats.images_billed, stats.lost_replies) == (1, 1)
    assert stats.requests["generate"] == {0: 1, 500: 1, 503: 1}


async def test_bad_bodies_are_invalid_arguments(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex()
    reply = await vx.generate({"contents": []})
    assert reply.status == 400 and reply.body["error"]["status"] == "INVALID_ARGUMENT"
    ratio = await vx.generate(image_request(ratio="7:5"))
    assert ratio.status == 400 and "aspectRatio" in ratio.body["error"]["message"]


async def test_stats_and_knobs_over_the_admin_routes(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(latency="fixed:5")
    origin = vx.emu.origin
    async with vx.session.post(f"{origin}/_emulator/config", json={"latency": "fixed:0", "dsq_429_rate": 0.5}) as r:
        assert r.status == 200 and (await r.json())["dsq_429_rate"] == 0.5
    async with vx.session.post(f"{origin}/_emulator/config", json={"projects": {"p": "not-a-number"}}) as r:
        assert r.status == 400
    vx.emu.configure(dsq_429_rate=0.0)
    assert (await vx.generate()).status == 200
    async with vx.session.get(f"{origin}/_emulator/stats") as r:
        stats = await r.json()
    assert stats["images_billed"] == 1 and stats["tokens_issued"] == 1 and stats["cost_usd"] == str(Decimal("0.067"))
    assert stats["requests"]["generate"] == {"200": 1}
    async with vx.session.post(f"{origin}/_emulator/reset") as r:
        assert r.status == 200
    assert vx.emu.stats.images_billed == 0
    assert (await vx.generate()).status == 401  # a reset forgets issued tokens
