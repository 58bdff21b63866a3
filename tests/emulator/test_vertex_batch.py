"""Batch prediction jobs on the Vertex emulator over real HTTP: inputs and outputs in its Cloud Storage, states
on a clock the test moves, rows exported as the job runs, and billing counted per row at half the online price."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from .emu_helpers import LITE
from .gemini_helpers import image_request
from .vertex_helpers import MakeVertex, VertexApi, rows_jsonl

PROMPTS = tuple(f"prompt {n}" for n in range(6))
INPUT = "gs://bkt/stage/in.jsonl"


async def _staged(api: VertexApi, data: bytes = rows_jsonl(*PROMPTS)) -> None:
    assert (await api.put_object("bkt", "stage/in.jsonl", data)).status == 200


def _all_lines(outputs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [line for lines in outputs.values() for line in lines]


async def test_a_job_runs_from_queued_to_succeeded_and_writes_several_files(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_latency="fixed:100", batch_queued_s=50, batch_output_files=3)
    emu = vx.emu
    bad = json.dumps({"key": "broken", "request": {"contents": []}}).encode()
    await _staged(vx, rows_jsonl(*PROMPTS) + bad + b"\n")
    created = await vx.create_job(INPUT, "gs://bkt/out/run-1", display_name="shard-1")
    assert created.status == 200, created.body
    job = created.body
    assert job["name"].startswith(f"projects/{emu.project_number}/locations/global/batchPredictionJobs/")
    assert job["state"] == "JOB_STATE_QUEUED" and job["displayName"] == "shard-1"
    assert job["model"] == f"publishers/google/models/{LITE}" and "done" not in job and "outputInfo" not in job
    states = []
    for step in (40, 15, 10, 100):  # 40: queued; 55: pending; 65: running; 165: done
        emu.advance(step)
        states.append((await vx.job(job["name"])).body["state"])
    assert states == ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    done = (await vx.job(job["name"])).body
    assert done["completionStats"] == {"successfulCount": "6", "failedCount": "1"}  # strings; no zero incomplete
    directory = done["outputInfo"]["gcsOutputDirectory"]
    assert directory.startswith("gs://bkt/out/run-1/prediction-model-") and directory.endswith("Z")
    outputs = await vx.output_lines(directory)
    assert len(outputs) == 3 and all(name.endswith(".jsonl") for name in outputs)
    lines = _all_lines(outputs)
    assert sorted(line["key"] for line in lines) == sorted([*PROMPTS, "broken"])
    for line in lines:
        if line["key"] == "broken":
            assert "response" not in line and line["status"].startswith("Bad Request: ")
            assert json.loads(line["status"].removeprefix("Bad Request: "))["error"]["status"] == "INVALID_ARGUMENT"
        else:
            assert line["status"] == "" and line["request"] == image_request(line["key"])
            parts = line["response"]["candidates"][0]["content"]["parts"]
            assert parts[0]["inlineData"]["mimeType"] == "image/png" and "createTime" in line["response"]
    stats = emu.stats
    assert stats.batch_rows_billed == 6 and stats.batch_rows_failed == 1
    assert stats.batch_rows_by_key == dict.fromkeys(PROMPTS, 1)
    assert stats.batch_rows_by_job == {job["name"].rsplit("/", 1)[1]: 6}
    assert stats.cost_usd(emu.config.prices) == Decimal("0.067") * 6 / 2
    assert stats.jobs_by_state == {"JOB_STATE_SUCCEEDED": 1}


async def test_rows_finished_before_a_cancel_are_kept_and_billed(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_latency="fixed:100", batch_cancel_s=30)
    await _staged(vx)
    job = (await vx.create_job(INPUT)).body
    vx.emu.advance(10 + 45)  # pending for 10 s, then 45 of 90 s of rows: 3 of 6 done
    running = (await vx.job(job["name"])).body
    assert running["state"] == "JOB_STATE_RUNNING" and running["completionStats"] == {"successfulCount": "3"}
    assert len(_all_lines(await vx.output_lines(running["outputInfo"]["gcsOutputDirectory"]))) == 3
    assert (await vx.job(job["name"], "POST", ":cancel")).body == {}
    assert (await vx.job(job["name"])).body["state"] == "JOB_STATE_CANCELLING"
    vx.emu.advance(100)
    ended = (await vx.job(job["name"])).body
    assert ended["state"] == "JOB_STATE_CANCELLED"
    assert ended["completionStats"] == {"successfulCount": "3", "incompleteCount": "3"}
    assert len(_all_lines(await vx.output_lines(ended["outputInfo"]["gcsOutputDirectory"]))) == 3
    assert vx.emu.stats.batch_rows_billed == 3
    again = await vx.job(job["name"], "POST", ":cancel")
    assert again.status == 400 and again.body["error"]["status"] == "FAILED_PRECONDITION"


@pytest.mark.parametrize(
    ("knobs", "state", "billed", "stats"),
    [
        ({"batch_fail_rate": 1.0}, "JOB_STATE_FAILED", 3, {"successfulCount": "3", "incompleteCount": "3"}),
        (
            {"batch_partial_rate": 1.0},
            "JOB_STATE_PARTIALLY_SUCCEEDED",
            5,
            {"successfulCount": "5", "incompleteCount": "1"},
        ),
    ],
)
async def test_a_job_that_fails_or_half_succeeds_keeps_the_rows_it_finished(
    make_vertex: MakeVertex, knobs: dict[str, Any], state: str, billed: int, stats: dict[str, str]
) -> None:
    vx: VertexApi = await make_vertex(batch_latency="fixed:100", **knobs)
    await _staged(vx)
    job = (await vx.create_job(INPUT)).body
    vx.emu.advance(200)
    ended = (await vx.job(job["name"])).body
    assert ended["state"] == state and ended["completionStats"] == stats
    assert ("error" in ended) == (state == "JOB_STATE_FAILED")
    assert len(_all_lines(await vx.output_lines(ended["outputInfo"]["gcsOutputDirectory"]))) == billed
    assert vx.emu.stats.batch_rows_billed == billed


async def test_a_job_queued_past_its_expiry_ends_expired_having_run_nothing(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_queued_s=5000, batch_expiry_s=3600, token_lifetime_s=7200)
    await _staged(vx)
    job = (await vx.create_job(INPUT)).body
    vx.emu.advance(3600)
    ended = (await vx.job(job["name"])).body
    assert ended["state"] == "JOB_STATE_EXPIRED" and "outputInfo" not in ended and "completionStats" not in ended
    assert vx.emu.stats.batch_rows_billed == 0


async def test_a_job_whose_input_is_gone_when_it_starts_fails(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_latency="fixed:100")
    await _staged(vx)
    job = (await vx.create_job(INPUT)).body
    deleted = await vx.call("DELETE", f"{vx.emu.origin}/storage/v1/b/bkt/o/stage%2Fin.jsonl", auth=False)
    assert deleted.status == 204
    vx.emu.advance(20)
    ended = (await vx.job(job["name"])).body
    assert ended["state"] == "JOB_STATE_FAILED" and INPUT in ended["error"]["message"]
    assert vx.emu.stats.batch_rows_billed == 0


async def test_rows_fail_or_are_refused_at_the_configured_rates(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(
        batch_latency="fixed:10", batch_line_fail_rate=0.3, batch_line_refusal_rate=0.3, seed=7
    )
    await _staged(vx)
    job = (await vx.create_job(INPUT)).body
    vx.emu.advance(20)
    ended = (await vx.job(job["name"])).body
    lines = _all_lines(await vx.output_lines(ended["outputInfo"]["gcsOutputDirectory"]))
    failed = [line for line in lines if line["status"]]
    refused = [line for line in lines if "response" in line and "content" not in line["response"]["candidates"][0]]
    images = len(lines) - len(failed) - len(refused)
    assert failed and refused and images  # seed 7 draws each outcome at least once
    assert all("INTERNAL" in line["status"] and "response" not in line for line in failed)
    stats = vx.emu.stats
    assert (stats.batch_rows_failed, stats.batch_rows_refused, stats.batch_rows_billed) == (
        len(failed),
        len(refused),
        images,
    )
    assert ended["completionStats"].get("failedCount") == str(len(failed))


async def test_listing_filters_by_display_name_pages_and_lags(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_list_lag_s=30)
    await _staged(vx)
    assert (await vx.list_jobs()).body == {}  # an empty listing is {}
    for name in ("a", "b", "a", "a"):
        assert (await vx.create_job(INPUT, display_name=name)).status == 200
    assert (await vx.list_jobs(filter='display_name="a"')).body == {}  # not listed yet
    vx.emu.advance(30)
    found: list[str] = []
    token = ""
    while True:
        params = {"filter": 'display_name="a"', "pageSize": "2", **({"pageToken": token} if token else {})}
        page = (await vx.list_jobs(**params)).body
        found += [job["name"] for job in page["batchPredictionJobs"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert len(found) == 3 == len(set(found))
    assert (await vx.list_jobs(filter='display_name="zzz"')).body == {}
    bad = await vx.list_jobs(filter="labels.x=1")
    assert bad.status == 400 and bad.body["error"]["status"] == "INVALID_ARGUMENT"


async def test_creates_that_fail_before_or_after_making_the_job(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_create_503_rate=1.0)
    await _staged(vx)
    refused = await vx.create_job(INPUT, display_name="s")
    assert refused.status == 503 and vx.emu.stats.jobs_created == 0
    vx.emu.configure(batch_create_503_rate=0.0, batch_create_gateway_rate=1.0)
    lost = await vx.create_job(INPUT, display_name="s")
    assert lost.status == 502 and lost.headers["Content-Type"].startswith("text/html")
    listed = (await vx.list_jobs(filter='display_name="s"')).body["batchPredictionJobs"]
    assert len(listed) == 1 and vx.emu.stats.jobs_by_display_name == {"s": 1}  # made, though the reply was lost


async def test_delete_needs_an_ended_job(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex(batch_latency="fixed:10")
    await _staged(vx)
    job = (await vx.create_job(INPUT)).body
    early = await vx.job(job["name"], "DELETE")
    assert early.status == 400 and early.body["error"]["status"] == "FAILED_PRECONDITION"
    vx.emu.advance(20)
    gone = await vx.job(job["name"], "DELETE")
    assert gone.status == 200 and gone.body["done"] is True
    assert (await vx.job(job["name"])).status == 404


async def test_jobs_need_a_token_an_allowed_project_and_a_known_model(make_vertex: MakeVertex) -> None:
    vx: VertexApi = await make_vertex()
    await _staged(vx)
    unknown = await vx.create_job(INPUT, model="imagen-9")
    assert unknown.status == 404
    bad_body = await vx.call("POST", f"{vx.project_base}/batchPredictionJobs", json={"displayName": "x"})
    assert bad_body.status == 400 and bad_body.body["error"]["status"] == "INVALID_ARGUMENT"
    other = await vx.call("GET", f"{vx.emu.origin}/v1/projects/someone-else/locations/global/batchPredictionJobs")
    assert other.status == 403
    vx.token = ""
    assert (await vx.list_jobs()).status == 401
