"""Every fault knob, at probability 1 so each test is deterministic, plus one seeded mid-rate check."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from .emu_helpers import LITE, PNG_SIGNATURE, MakeApi


@pytest.mark.parametrize(("knob", "code"), [("error_500_rate", 500), ("error_503_rate", 503)])
async def test_server_errors_on_create_and_query(make_api: MakeApi, knob: str, code: int) -> None:
    api = await make_api(**{knob: 1.0})
    created = await api.create()
    queried = await api.query("anything")
    for reply in (created, queried):
        assert reply.status == code and reply.body["code"] == code and reply.body["msg"]
    assert api.emu.stats.creates_accepted == 0


async def test_server_errors_under_http_200(make_api: MakeApi) -> None:
    api = await make_api(error_503_rate=1.0, errors_http_200=True)
    reply = await api.create()
    assert reply.status == 200 and reply.body["code"] == 503


async def test_drop_closes_the_connection_and_creates_nothing(make_api: MakeApi) -> None:
    api = await make_api(drop_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.create()
    stats = api.emu.stats
    assert stats.creates_accepted == 0 and stats.dropped == 1
    assert stats.requests["create"] == {0: 1}  # 0: no reply was sent


async def test_lost_create_is_billed_but_the_reply_never_arrives(make_api: MakeApi) -> None:
    api = await make_api(lost_create_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.create(prompt="lost one")
    stats = api.emu.stats
    assert stats.creates_accepted == 1
    assert stats.lost_creates == 1
    assert stats.accepted_by_prompt == {"lost one": 1}
    assert len(api.emu.state.book) == 1  # the generation exists and runs
    api.emu.configure(lost_create_rate=0.0)
    assert (await api.create()).status == 200


async def test_malformed_reply_is_http_200_but_not_json(make_api: MakeApi) -> None:
    api = await make_api(malformed_rate=1.0)
    async with api.session.post(
        f"{api.emu.base_url}/image-generation", json={"model": LITE, "prompt": "x"}, headers=api.headers
    ) as resp:
        text = await resp.text()
    assert resp.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert api.emu.stats.malformed == 1 and api.emu.stats.creates_accepted == 0


async def test_slow_reply_is_delayed_then_normal(make_api: MakeApi) -> None:
    api = await make_api(slow_rate=1.0, slow_s=0.3)
    started = time.monotonic()
    reply = await api.create()
    assert time.monotonic() - started >= 0.3
    assert reply.status == 200 and reply.body["code"] == 0


async def test_faults_skip_downloads_unless_asked(make_api: MakeApi) -> None:
    api = await make_api()
    url = (await api.generate())["file_url"]
    api.emu.configure(error_500_rate=1.0)
    assert (await api.download(url))[0] == 200  # default fault_kinds: create and query
    api.emu.configure(fault_kinds=["download"])
    assert (await api.download(url))[0] == 500
    assert (await api.query("whatever")).status == 404  # queries are now spared


async def test_faults_can_be_limited_to_queries(make_api: MakeApi) -> None:
    api = await make_api(error_503_rate=1.0, fault_kinds=["query"])
    created = await api.create()
    assert created.status == 200
    assert (await api.query(created.data["task_id"])).status == 503


async def test_truncated_download_promises_more_bytes_than_it_sends(make_api: MakeApi) -> None:
    api = await make_api(truncate_rate=1.0)
    url = (await api.generate())["file_url"]
    async with api.session.get(url) as resp:
        assert resp.status == 200
        promised = resp.content_length
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert promised is not None and promised > 0
    stats = api.emu.stats
    assert stats.truncated_downloads == 1 and stats.downloads == 0
    api.emu.configure(truncate_rate=0.0)
    status, body = await api.download(url)
    assert status == 200 and len(body) == promised and body.startswith(PNG_SIGNATURE)
    assert api.emu.stats.downloads == 1


async def test_fail_rate_fails_generations_not_requests(make_api: MakeApi) -> None:
    api = await make_api(fail_rate=1.0, fail_reason="safety filter")
    created = await api.create()
    assert created.status == 200 and created.body["code"] == 0
    data = (await api.query(created.data["task_id"])).data
    assert (data["status"], data["msg"]) == ("Failed", "safety filter")
    assert api.emu.stats.failures == 1 and api.emu.stats.creates_accepted == 1


async def test_seeded_mid_rate_is_near_the_rate_and_reproduces(make_api: MakeApi) -> None:
    api = await make_api(fail_rate=0.3, seed=7)

    async def outcomes() -> list[str]:
        return [(await api.generate(prompt=f"p{i}"))["status"] for i in range(200)]

    first = await outcomes()
    assert 0.2 <= first.count("Failed") / len(first) <= 0.4
    assert set(first) == {"Success", "Failed"}
    async with api.session.post(api.emu.origin + "/_emulator/reset") as resp:
        assert resp.status == 200
    assert await outcomes() == first  # reset re-seeds: the same requests meet the same fates


async def test_forgotten_task_answers_404_after_its_success_and_is_counted_by_prompt(make_api: MakeApi) -> None:
    api = await make_api(forget_rate=1.0)
    data = await api.generate(prompt="forgotten one")  # the one Success a query reports
    assert data["status"] == "Success"
    again = await api.query(data["task_id"])
    assert again.status == 404
    status, _ = await api.download(data["file_url"])
    assert status == 404
    stats = await api.stats()  # as an outside driver (the chaos run) reads them
    assert stats["forgotten_answers"] == 2 and stats["forgotten_by_prompt"] == {"forgotten one": 2}
    assert stats["successes"] == 1
