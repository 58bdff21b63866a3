"""Batch Mode on the Gemini emulator over HTTP: uploads, the batch lifecycle, results, billing and faults."""

from __future__ import annotations

import asyncio
import base64
from decimal import Decimal

import aiohttp
import pytest

from .emu_helpers import read_png, until_waiting
from .gemini_helpers import BatchApi, MakeGemini, jsonl


async def _batches(make_gemini: MakeGemini, **knobs: object) -> BatchApi:
    return BatchApi(await make_gemini(**knobs))


async def test_a_resumable_upload_in_two_chunks(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    data = jsonl("a", "b")
    url = await api.start_upload(len(data))
    assert (await api.send_chunk(url, data[:10], 0, "upload"))[:2] == (200, "active")
    wrong = await api.send_chunk(url, data[10:], 5, "upload, finalize")
    assert wrong[0] == 400 and "Offset must be 10" in wrong[2]["error"]["message"]
    status, upload_status, body = await api.send_chunk(url, data[10:], 10, "upload, finalize")
    assert (status, upload_status) == (200, "final")
    resource = body["file"]
    assert resource["name"].startswith("files/") and resource["sizeBytes"] == str(len(data))
    assert resource["state"] == "ACTIVE" and resource["mimeType"] == "application/jsonl"
    assert resource["displayName"] == "input" and resource["expirationTime"]
    assert (await api.get(resource["name"])).body["sizeBytes"] == str(len(data))
    assert (await api.call("DELETE", f"{api.base}/{resource['name']}")).status == 200
    gone = await api.get(resource["name"])
    assert gone.status == 403 and gone.body["error"]["status"] == "PERMISSION_DENIED"
    stats = api.api.emu.stats
    assert stats.files_uploaded == 1 and stats.files_deleted == 1


async def test_an_upload_shorter_than_declared_is_refused(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    url = await api.start_upload(100)
    status, _, body = await api.send_chunk(url, b"{}", 0, "upload, finalize")
    assert status == 400 and "100 were declared" in body["error"]["message"]


async def test_a_batch_goes_pending_running_succeeded_and_bills_half_price(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_latency="fixed:1000")
    name_file = await api.upload(jsonl("red", "green", "blue", ratio="16:9"))
    created = await api.create(name_file, "colours")
    assert created.status == 200, created.body
    meta = created.body["metadata"]
    assert meta["state"] == "BATCH_STATE_PENDING" and meta["displayName"] == "colours"
    assert meta["model"] == "models/gemini-3.1-flash-lite-image" and "done" not in created.body
    counts = meta["batchStats"]
    assert (counts["requestCount"], counts["successfulRequestCount"], counts["pendingRequestCount"]) == ("3", "0", "3")
    name = created.body["name"]
    api.api.emu.advance(100)
    assert (await api.get(name)).body["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert api.api.emu.stats.batch_lines_billed == 0
    api.api.emu.advance(900)
    done = (await api.get(name)).body
    assert done["done"] is True and done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    results = done["response"]["responsesFile"]
    assert done["metadata"]["output"]["responsesFile"] == results
    assert done["metadata"]["batchStats"]["successfulRequestCount"] == "3"
    for prefix in ("/download", ""):
        status, lines = await api.download(results, prefix)
        assert status == 200 and [line["key"] for line in lines] == ["red", "green", "blue"]
    part = lines[0]["response"]["candidates"][0]["content"]["parts"][0]
    png = read_png(base64.b64decode(part["inlineData"]["data"]))
    assert (png.width, png.height) == (1376, 768)
    stats = api.api.emu.stats
    assert stats.batch_lines_billed == 3 and stats.batch_lines_by_key == {"red": 1, "green": 1, "blue": 1}
    assert stats.images_billed == 0
    assert stats.cost_usd({"gemini-3.1-flash-lite-image": "0.067"}) == Decimal("0.1005")  # 3 lines at half price
    assert stats.batches_by_state == {"BATCH_STATE_SUCCEEDED": 1}


async def test_creating_twice_makes_two_batches_both_billed(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    file_name = await api.upload(jsonl("once", "twice"))
    first, second = await api.create(file_name, "same"), await api.create(file_name, "same")
    assert first.body["name"] != second.body["name"]
    api.api.emu.advance(60)
    stats = api.api.emu.stats
    assert stats.batches_created == 2 and stats.batches_by_display_name == {"same": 2}
    assert stats.batch_lines_billed == 4 and stats.batch_lines_by_key == {"once": 2, "twice": 2}


async def test_a_batch_past_its_expiry_ends_expired_with_no_results(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_latency="fixed:100", batch_expiry_s=50)
    created = await api.create(await api.upload(jsonl("late")))
    api.api.emu.advance(200)
    body = (await api.get(created.body["name"])).body
    assert body["metadata"]["state"] == "BATCH_STATE_EXPIRED" and body["done"] is True
    assert "response" not in body and "output" not in body["metadata"]
    assert api.api.emu.stats.batch_lines_billed == 0


async def test_a_failed_batch_carries_an_error_and_bills_nothing(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_fail_rate=1.0)
    created = await api.create(await api.upload(jsonl("doomed")))
    api.api.emu.advance(60)
    body = (await api.get(created.body["name"])).body
    assert body["metadata"]["state"] == "BATCH_STATE_FAILED" and body["error"]["message"]
    assert api.api.emu.stats.batch_lines_billed == 0


async def test_failed_and_refused_lines_are_not_billed(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_line_fail_rate=1.0)
    data = jsonl("f1", "f2") + b"not json\n"
    created = await api.create(await api.upload(data))
    api.api.emu.advance(60)
    body = (await api.get(created.body["name"])).body
    assert body["metadata"]["batchStats"]["failedRequestCount"] == "3"
    _, lines = await api.download(body["response"]["responsesFile"])
    assert [sorted(line) for line in lines] == [["error", "key"]] * 3
    assert lines[2]["key"] == "line-3" and lines[2]["error"]["code"] == 3  # INVALID_ARGUMENT
    api.api.emu.configure(batch_line_fail_rate=0.0, batch_line_refusal_rate=1.0)
    refused = await api.create(await api.upload(jsonl("r1")))
    api.api.emu.advance(60)
    done = (await api.get(refused.body["name"])).body
    _, lines = await api.download(done["response"]["responsesFile"])
    assert lines[0]["response"]["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert "content" not in lines[0]["response"]["candidates"][0]
    stats = api.api.emu.stats
    assert stats.batch_lines_billed == 0 and stats.batch_lines_failed == 3 and stats.batch_lines_refused == 1


async def test_get_and_download_answer_503_for_a_while_after_success(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_unavailable_s=600)
    created = await api.create(await api.upload(jsonl("big")))
    name = created.body["name"]
    api.api.emu.advance(60)
    unavailable = await api.get(name)
    assert unavailable.status == 503 and unavailable.body["error"]["status"] == "UNAVAILABLE"
    assert api.api.emu.stats.batch_lines_billed == 1  # it succeeded, and was billed, all the same
    results = f"files/batch-{name.removeprefix('batches/')}"
    assert (await api.download(results))[0] == 503
    api.api.emu.advance(600)
    assert (await api.get(name)).status == 200
    assert (await api.download(results))[0] == 200
    assert api.api.emu.stats.unavailable_answers == 2


async def test_the_list_is_paginated_newest_first(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    file_name = await api.upload(jsonl("x"))
    names = [(await api.create(file_name, f"b{i}")).body["name"] for i in range(3)]
    first = await api.call("GET", f"{api.base}/batches", params={"pageSize": "2"})
    assert [op["name"] for op in first.body["operations"]] == names[:0:-1]
    token = first.body["nextPageToken"]
    second = await api.call("GET", f"{api.base}/batches", params={"pageSize": "2", "pageToken": token})
    assert [op["name"] for op in second.body["operations"]] == names[:1] and "nextPageToken" not in second.body


async def test_a_cancelled_batch_bills_nothing_and_cannot_be_cancelled_again(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    name = (await api.create(await api.upload(jsonl("stop")))).body["name"]
    assert (await api.call("POST", f"{api.base}/{name}:cancel")).status == 200
    api.api.emu.advance(60)
    body = (await api.get(name)).body
    assert body["metadata"]["state"] == "BATCH_STATE_CANCELLED" and "response" not in body
    again = await api.call("POST", f"{api.base}/{name}:cancel")
    assert again.status == 400 and again.body["error"]["status"] == "FAILED_PRECONDITION"
    assert api.api.emu.stats.batch_lines_billed == 0


async def test_a_deleted_batch_disappears_but_still_runs_and_bills(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    name = (await api.create(await api.upload(jsonl("ghost")))).body["name"]
    assert (await api.call("DELETE", f"{api.base}/{name}")).status == 200
    assert (await api.get(name)).status == 404
    assert (await api.call("GET", f"{api.base}/batches")).body["operations"] == []
    api.api.emu.advance(60)
    assert api.api.emu.stats.batch_lines_billed == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"batch": {"displayName": "x", "inputConfig": {"fileName": "files/missing"}}}, 400),
        ({"batch": {"displayName": "x", "inputConfig": {"requests": {"requests": []}}}}, 400),
        ({"nope": 1}, 400),
    ],
)
async def test_bad_creates_are_refused(make_gemini: MakeGemini, body: dict[str, object], code: int) -> None:
    api = await _batches(make_gemini)
    url = f"{api.base}/models/gemini-3.1-flash-lite-image:batchGenerateContent"
    reply = await api.call("POST", url, json=body)
    assert reply.status == code and reply.body["error"]["status"] == "INVALID_ARGUMENT"
    unknown = await api.call("POST", f"{api.base}/models/nope:batchGenerateContent", json=body)
    assert unknown.status == 404
    assert api.api.emu.stats.batches_created == 0


async def test_batch_routes_need_the_key(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini)
    async with api.api.session.get(f"{api.base}/batches") as resp:
        assert resp.status == 403


async def test_files_are_deleted_after_their_time_to_live(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, file_ttl_s=100)
    file_name = await api.upload(jsonl("brief"))
    api.api.emu.advance(99)
    assert (await api.get(file_name)).status == 200
    api.api.emu.advance(1)
    gone = await api.get(file_name)  # past its time: 404 (a file that never was answers 403)
    assert gone.status == 404 and gone.body["error"]["status"] == "NOT_FOUND"
    assert (await api.create(file_name)).status == 400
    assert api.api.emu.stats.expired_file_answers == 1


async def test_a_create_answered_503_makes_no_batch(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_create_503_rate=1.0)
    reply = await api.create(await api.upload(jsonl("maybe")), "flaky")
    assert reply.status == 503 and reply.body["error"]["status"] == "UNAVAILABLE"
    assert api.api.emu.stats.batches_created == 0


async def test_a_create_whose_reply_is_lost_made_the_batch(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_create_lost_rate=1.0)
    file_name = await api.upload(jsonl("lost"))
    with pytest.raises(aiohttp.ClientError):
        await api.create(file_name, "lost")
    stats = api.api.emu.stats
    assert stats.batches_by_display_name == {"lost": 1}
    listed = (await api.call("GET", f"{api.base}/batches")).body["operations"]
    assert [op["metadata"]["displayName"] for op in listed] == ["lost"]


async def test_one_page_of_the_list_can_answer_503(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_list_unavailable_page=2)
    file_name = await api.upload(jsonl("x"))
    for i in range(3):
        await api.create(file_name, f"b{i}")
    first = await api.call("GET", f"{api.base}/batches", params={"pageSize": "2"})
    assert first.status == 200 and len(first.body["operations"]) == 2
    params = {"pageSize": "2", "pageToken": first.body["nextPageToken"]}
    second = await api.call("GET", f"{api.base}/batches", params=params)
    assert second.status == 503 and second.body["error"]["status"] == "UNAVAILABLE"
    api.api.emu.configure(batch_list_unavailable_page=0)
    assert (await api.call("GET", f"{api.base}/batches", params=params)).status == 200
    with pytest.raises(ValueError, match="batch_list_unavailable_page"):
        api.api.emu.configure(batch_list_unavailable_page=-1)


async def test_a_delayed_create_makes_the_batch_before_its_reply_leaves(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_create_delay_s=30.0)
    stats = api.api.emu.stats
    name_file = await api.upload(jsonl("slow"))
    reply = asyncio.create_task(api.create(name_file, "slow-create"))
    for _ in range(200):
        if stats.batches_created:
            break
        await asyncio.sleep(0.01)
    assert stats.batches_by_display_name == {"slow-create": 1} and not reply.done()
    api.api.emu.advance(30)  # the wait ends: the reply leaves
    created = await asyncio.wait_for(reply, 5)
    assert created.status == 200 and created.body["metadata"]["displayName"] == "slow-create"
    assert stats.batches_created == 1


async def test_a_delayed_finalize_stores_the_file_only_after_its_wait(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, upload_finalize_delay_s=30.0)
    stats = api.api.emu.stats
    data = jsonl("a", "b")
    url = await api.start_upload(len(data))
    sent = asyncio.create_task(api.send_chunk(url, data, 0, "upload, finalize"))
    await until_waiting(api.api.emu.clock, 1)  # the finalize waits
    assert not sent.done() and stats.files_uploaded == 0
    api.api.emu.advance(30)
    status, upload_status, body = await asyncio.wait_for(sent, 5)
    assert (status, upload_status) == (200, "final") and body["file"]["name"].startswith("files/")
    assert stats.files_uploaded == 1
