"""What Google's service does around a long batch, played by the Gemini emulator over HTTP (each knob off by
default): creates answered by a gateway after the batch was made, a listing that lags, files that expire or are
gone, lines that finish one by one and are kept (and billed) by any ending, responses files that leave out
billed lines, slow get/list/cancel, and the billing a test reads per batch and per key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest

from .emu_helpers import until_waiting
from .gemini_helpers import BatchApi, MakeGemini, jsonl

KEYS = tuple(f"k{i:02d}" for i in range(20))
CANCELLED, FAILED, EXPIRED = "BATCH_STATE_CANCELLED", "BATCH_STATE_FAILED", "BATCH_STATE_EXPIRED"


async def _batches(make_gemini: MakeGemini, **knobs: object) -> BatchApi:
    return BatchApi(await make_gemini(**knobs))


async def _raw(api: BatchApi, method: str, url: str, **kwargs: Any) -> tuple[int, str, str]:
    """(status, content type, body text) of a reply that may not be JSON."""
    async with api.api.session.request(method, url, headers=api.api.headers, **kwargs) as resp:
        return resp.status, resp.content_type, await resp.text()


async def _listed(api: BatchApi) -> list[str]:
    reply = await api.call("GET", f"{api.base}/batches")
    assert reply.status == 200, reply.body
    return [op["name"] for op in reply.body["operations"]]


def _stats(op: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in op["metadata"]["batchStats"].items()}


async def _file_keys(api: BatchApi, file_name: str) -> list[str]:
    status, lines = await api.download(file_name)
    assert status == 200, lines
    return [line["key"] for line in lines]


# --- creation answered by a gateway ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "content_type", "words"),
    [
        (502, "google", "text/html", "Error 502 (Server Error)"),
        (504, "google", "application/json", "DEADLINE_EXCEEDED"),
        (502, "bare", "text/plain", "502 Bad Gateway"),
        (504, "bare", "text/plain", "upstream request timeout"),
    ],
)
async def test_a_create_answered_by_a_gateway_made_the_batch(
    make_gemini: MakeGemini, status: int, body: str, content_type: str, words: str
) -> None:
    knobs = {"batch_create_gateway_status": status, "batch_create_gateway_body": body}
    api = await _batches(make_gemini, batch_create_gateway_rate=1.0, **knobs)
    file_name = await api.upload(jsonl("a", "b"))
    url = f"{api.base}/models/gemini-3.1-flash-lite-image:batchGenerateContent"
    request = {"batch": {"displayName": "gw", "inputConfig": {"fileName": file_name}}}
    got = await _raw(api, "POST", url, json=request)
    assert got[:2] == (status, content_type) and words in got[2]
    assert await _listed(api) != []  # it was made all the same
    api.api.emu.advance(60)
    stats = api.api.emu.stats
    assert stats.batch_create_gateway_errors == 1 and stats.batches_by_display_name == {"gw": 1}
    assert stats.batch_lines_by_key == {"a": 1, "b": 1}


async def test_the_gateway_status_is_drawn_when_not_set(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_create_gateway_rate=1.0, seed=3)
    file_name = await api.upload(jsonl("a"))
    url = f"{api.base}/models/gemini-3.1-flash-lite-image:batchGenerateContent"
    request = {"batch": {"displayName": "gw", "inputConfig": {"fileName": file_name}}}
    statuses = {(await _raw(api, "POST", url, json=request))[0] for _ in range(12)}
    assert statuses == {502, 504}
    assert api.api.emu.stats.batches_created == 12


# --- a listing that is not immediately consistent ------------------------------------------------------------


async def test_the_listing_shows_a_new_batch_only_after_its_lag(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_list_lag_s=6.0)
    name = (await api.create(await api.upload(jsonl("late")), "lagging")).body["name"]
    assert (await api.get(name)).status == 200  # get by name knows it at once
    assert await _listed(api) == []
    api.api.emu.advance(5.9)
    assert await _listed(api) == []
    api.api.emu.advance(0.1)
    assert await _listed(api) == [name]


# --- files that expire, and responses files that are gone -----------------------------------------------------


async def test_results_and_input_files_expire_to_404(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_latency="fixed:100")  # files live 48 h on the emulator's clock
    input_file = await api.upload(jsonl("old", "older"))
    name = (await api.create(input_file)).body["name"]
    api.api.emu.advance(100)
    results = (await api.get(name)).body["response"]["responsesFile"]
    assert await _file_keys(api, results) == ["old", "older"]
    api.api.emu.advance(48 * 3600 - 100.5)
    assert (await api.get(input_file)).status == 200  # made 100 s before the results
    api.api.emu.advance(1)
    assert (await api.get(input_file)).status == 404
    assert (await api.get(results)).status == 200
    api.api.emu.advance(100)
    status, body = await api.download(results)
    assert status == 404 and body[0]["error"]["status"] == "NOT_FOUND"
    assert (await api.get(results)).status == 404
    done = (await api.get(name)).body
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"  # the batch outlives its files
    stats = api.api.emu.stats
    assert stats.batch_lines_billed == 2 and stats.expired_file_answers == 3


@pytest.mark.parametrize("status", [403, 404])
async def test_a_gone_responses_file_answers_at_once_and_was_billed(make_gemini: MakeGemini, status: int) -> None:
    api = await _batches(make_gemini, results_gone_rate=1.0, results_gone_status=status)
    name = (await api.create(await api.upload(jsonl("paid", "lost")))).body["name"]
    api.api.emu.advance(60)
    op = (await api.get(name)).body
    assert op["metadata"]["state"] == "BATCH_STATE_SUCCEEDED" and _stats(op)["successfulRequestCount"] == 2
    results = op["response"]["responsesFile"]
    got, body = await api.download(results)
    assert got == status and body[0]["error"]["code"] == status
    assert (await api.get(results)).status == status
    stats = api.api.emu.stats
    assert stats.results_files_gone == 1 and stats.gone_file_answers == 2
    assert stats.batch_lines_by_key == {"paid": 1, "lost": 1}


async def test_one_batch_s_responses_file_can_be_made_gone(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_latency="fixed:100")
    emu = api.api.emu
    file_name = await api.upload(jsonl("x", "y"))
    early, late, kept = [(await api.create(file_name, f"b{i}")).body["name"] for i in range(3)]
    emu.lose_results(early)  # before it ends: gone as soon as its file is made
    emu.advance(100)
    emu.lose_results(late, 404)  # ended: gone at once
    answers = []
    for name in (early, late, kept):
        answers.append((await api.download((await api.get(name)).body["response"]["responsesFile"]))[0])
    assert answers == [403, 404, 200]
    assert emu.stats.results_files_gone == 2 and emu.stats.batch_lines_billed == 6
    with pytest.raises(ValueError, match="403 or 404"):
        emu.lose_results(kept, 410)


# --- lines that finish one by one, kept by every ending --------------------------------------------------------


async def test_lines_finish_one_by_one_and_a_cancel_keeps_and_bills_them(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_latency="fixed:100", batch_partial_lines=True, seed=5)
    name = (await api.create(await api.upload(jsonl(*KEYS)), "partial")).body["name"]
    seen = []
    for _ in range(4):
        api.api.emu.advance(15)
        op = (await api.get(name)).body
        assert op["metadata"]["state"] == "BATCH_STATE_RUNNING" and "done" not in op
        counts = _stats(op)
        assert counts["successfulRequestCount"] + counts["pendingRequestCount"] == len(KEYS)
        seen.append(counts["successfulRequestCount"])
    assert seen == sorted(seen) and 0 < seen[0] < seen[-1] < len(KEYS), seen
    assert api.api.emu.stats.batch_lines_billed == 0  # billed when the batch ends
    assert (await api.call("POST", f"{api.base}/{name}:cancel")).status == 200
    op = (await api.get(name)).body
    assert op["metadata"]["state"] == CANCELLED and op["done"] is True
    finished = _stats(op)["successfulRequestCount"]
    assert finished == seen[-1]  # no time passed since the last look
    results = op["metadata"]["output"]["responsesFile"]
    assert op["response"]["responsesFile"] == results
    keys = await _file_keys(api, results)
    assert len(keys) == finished and set(keys) < set(KEYS)
    api.api.emu.advance(1000)  # nothing more finishes or bills once cancelled
    stats = api.api.emu.stats
    assert stats.batch_lines_billed == finished and stats.batch_lines_by_key == dict.fromkeys(keys, 1)
    assert stats.billed_keys_by_batch == {name: keys} and stats.batch_lines_by_batch == {name: finished}
    assert stats.state_by_batch == {name: CANCELLED} and stats.display_name_by_batch == {name: "partial"}


async def test_an_ending_with_no_responses_file_still_bills_its_finished_lines(make_gemini: MakeGemini) -> None:
    knobs = {"batch_partial_lines": True, "batch_ended_no_file_rate": 1.0, "seed": 5}
    api = await _batches(make_gemini, batch_latency="fixed:100", **knobs)
    name = (await api.create(await api.upload(jsonl(*KEYS)))).body["name"]
    api.api.emu.advance(60)
    assert (await api.call("POST", f"{api.base}/{name}:cancel")).status == 200
    op = (await api.get(name)).body
    finished = _stats(op)["successfulRequestCount"]
    assert op["metadata"]["state"] == CANCELLED and 0 < finished < len(KEYS)
    assert "response" not in op and "output" not in op["metadata"]
    assert api.api.emu.stats.batch_lines_billed == finished
    assert api.api.emu.stats.batches_without_file == [name]


async def test_an_expired_batch_keeps_and_bills_what_it_finished(make_gemini: MakeGemini) -> None:
    knobs = {"batch_partial_lines": True, "batch_expiry_s": 50.0, "seed": 2}
    api = await _batches(make_gemini, batch_latency="fixed:100", **knobs)
    name = (await api.create(await api.upload(jsonl(*KEYS)))).body["name"]
    api.api.emu.advance(200)
    op = (await api.get(name)).body
    finished = _stats(op)["successfulRequestCount"]
    assert op["metadata"]["state"] == EXPIRED and 0 < finished < len(KEYS)
    keys = await _file_keys(api, op["metadata"]["output"]["responsesFile"])
    assert len(keys) == finished and api.api.emu.stats.batch_lines_by_key == dict.fromkeys(keys, 1)


async def test_a_failed_batch_fails_midway_keeping_a_partial_file(make_gemini: MakeGemini) -> None:
    knobs = {"batch_partial_lines": True, "batch_fail_rate": 1.0, "seed": 4}
    api = await _batches(make_gemini, batch_latency="fixed:100", **knobs)
    name = (await api.create(await api.upload(jsonl(*KEYS)))).body["name"]
    api.api.emu.advance(100)
    op = (await api.get(name)).body
    assert op["metadata"]["state"] == FAILED and op["error"]["message"] and "response" not in op
    end = op["metadata"]["endTime"]
    assert end < op["metadata"]["updateTime"] or end == op["metadata"]["updateTime"]
    finished = _stats(op)["successfulRequestCount"]
    assert 0 < finished < len(KEYS)
    keys = await _file_keys(api, op["metadata"]["output"]["responsesFile"])
    assert len(keys) == finished
    stats = api.api.emu.stats
    assert stats.batch_lines_billed == finished and stats.batches_by_state == {FAILED: 1}


async def test_without_the_knob_other_endings_bill_nothing(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_latency="fixed:100")
    name = (await api.create(await api.upload(jsonl(*KEYS)))).body["name"]
    api.api.emu.advance(90)
    assert _stats((await api.get(name)).body)["successfulRequestCount"] == 0
    await api.call("POST", f"{api.base}/{name}:cancel")
    assert "output" not in (await api.get(name)).body["metadata"]
    assert api.api.emu.stats.batch_lines_billed == 0


# --- a succeeded batch whose responses file leaves out billed lines ----------------------------------------------


async def test_a_responses_file_can_leave_out_billed_lines_and_its_last_newline(make_gemini: MakeGemini) -> None:
    knobs = {"batch_omit_line_rate": 0.3, "batch_results_no_final_newline": True, "seed": 1}
    api = await _batches(make_gemini, **knobs)
    name = (await api.create(await api.upload(jsonl(*KEYS)))).body["name"]
    api.api.emu.advance(60)
    op = (await api.get(name)).body
    assert _stats(op)["successfulRequestCount"] == len(KEYS)  # batchStats count every billed line
    url = f"{api.api.emu.origin}/download/v1beta/{op['response']['responsesFile']}:download"
    status, _, text = await _raw(api, "GET", url, params={"alt": "media"})
    assert status == 200 and not text.endswith("\n")
    keys = [json.loads(line)["key"] for line in text.split("\n")]
    stats = api.api.emu.stats
    omitted = stats.omitted_keys_by_batch[name]
    assert 0 < len(omitted) < len(KEYS) and stats.batch_lines_omitted == len(omitted)
    assert sorted(keys + omitted) == sorted(KEYS) and stats.batch_lines_billed == len(KEYS)


# --- slow get, list and cancel --------------------------------------------------------------------------------


async def test_get_list_and_cancel_answer_after_their_latency(make_gemini: MakeGemini) -> None:
    api = await _batches(make_gemini, batch_api_latency="fixed:30", batch_latency="fixed:100")
    emu = api.api.emu
    file_name = await api.upload(jsonl("slow"))
    first = (await api.create(file_name, "first")).body["name"]  # create is not slowed
    cancel = asyncio.create_task(api.call("POST", f"{api.base}/{first}:cancel"))
    listing = asyncio.create_task(_listed(api))
    await until_waiting(emu.clock, 2)  # the cancel and the listing wait
    assert not cancel.done() and not listing.done()
    second = (await api.create(file_name, "second")).body["name"]  # lands while the cancel waits
    emu.advance(30)
    assert (await asyncio.wait_for(cancel, 5)).status == 200
    assert await asyncio.wait_for(listing, 5) == [second, first]  # it acted after its wait
    got = asyncio.create_task(api.get(second))
    await until_waiting(emu.clock, 1)
    assert not got.done()
    emu.advance(30)
    assert (await asyncio.wait_for(got, 5)).body["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert emu.stats.state_by_batch == {first: CANCELLED}


# --- billing a test can read -----------------------------------------------------------------------------------


@pytest.mark.parametrize("image_bytes", [None, 20_000])  # small patterned PNGs, or noisy ones of a size
async def test_billing_per_batch_and_key_with_each_image_s_sha256(
    make_gemini: MakeGemini, image_bytes: int | None
) -> None:
    api = await _batches(make_gemini, batch_line_refusal_rate=0.3, seed=8, image_bytes=image_bytes)
    file_name = await api.upload(jsonl("a", "b", "c", "d", "e"))
    one = (await api.create(file_name, "shard-1")).body["name"]
    two = (await api.create(file_name, "shard-1")).body["name"]  # a second batch of the same shard
    api.api.emu.advance(60)
    images: dict[str, str] = {}
    for name in (one, two):
        _, lines = await api.download((await api.get(name)).body["response"]["responsesFile"])
        for line in lines:
            parts = line["response"]["candidates"][0].get("content", {}).get("parts", [])
            for part in parts:
                images[line["key"]] = hashlib.sha256(base64.b64decode(part["inlineData"]["data"])).hexdigest()
    stats = api.api.emu.stats
    billed = set(stats.billed_keys_by_batch[one]) | set(stats.billed_keys_by_batch[two])
    assert billed == set(images) and 0 < len(images) < 5  # refused lines are not billed
    assert stats.image_sha256_by_key == images
    assert stats.batch_lines_by_batch == {n: len(stats.billed_keys_by_batch[n]) for n in (one, two)}
    assert stats.display_name_by_batch == {one: "shard-1", two: "shard-1"}
    served = (await api.api.admin("GET", "stats")).body  # the same over HTTP, for a process of its own
    assert served["billed_keys_by_batch"] == stats.billed_keys_by_batch
    assert served["image_sha256_by_key"] == images and served["batch_lines_billed"] == sum(
        stats.batch_lines_by_batch.values()
    )


@pytest.mark.parametrize(
    ("knobs", "words"),
    [
        ({"batch_create_gateway_status": 500}, "batch_create_gateway_status"),
        ({"batch_create_gateway_body": "html"}, "batch_create_gateway_body"),
        ({"results_gone_status": 410}, "results_gone_status"),
        ({"batch_list_lag_s": -1}, "batch_list_lag_s"),
        ({"batch_omit_line_rate": 2}, "batch_omit_line_rate"),
        ({"batch_partial_lines": "yes"}, "batch_partial_lines"),
    ],
)
async def test_bad_knobs_are_refused(make_gemini: MakeGemini, knobs: dict[str, object], words: str) -> None:
    api = await make_gemini()
    with pytest.raises(ValueError, match=words):
        api.emu.configure(**knobs)
