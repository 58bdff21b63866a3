"""Vertex AI batch prediction's resources and lines, read as the REST API writes them (no network)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from batcher.providers.base import BatchState, FailureKind, LineKind, Request
from batcher.providers.vertex_jobs import KEY_LABEL, job_info, parse_line, write_shard

NAME = "projects/123456789012/locations/global/batchPredictionJobs/42"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


@pytest.mark.parametrize(
    ("state", "generic"),
    [
        ("JOB_STATE_QUEUED", BatchState.PENDING),
        ("JOB_STATE_PENDING", BatchState.PENDING),
        ("JOB_STATE_PAUSED", BatchState.PENDING),
        ("JOB_STATE_UPDATING", BatchState.PENDING),
        ("JOB_STATE_RUNNING", BatchState.RUNNING),
        ("JOB_STATE_CANCELLING", BatchState.RUNNING),  # rows may still finish and bill
        ("JOB_STATE_SUCCEEDED", BatchState.SUCCEEDED),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", BatchState.SUCCEEDED),
        ("JOB_STATE_FAILED", BatchState.FAILED),
        ("JOB_STATE_CANCELLED", BatchState.CANCELLED),
        ("JOB_STATE_EXPIRED", BatchState.EXPIRED),
        ("JOB_STATE_SOMETHING_NEW", BatchState.UNSPECIFIED),  # keep polling
    ],
)
def test_every_job_state_maps_to_a_generic_one_with_no_done_field(state: str, generic: BatchState) -> None:
    info = job_info({"name": NAME, "displayName": "shard-1", "state": state})
    assert info is not None and info.state is generic and info.display_name == "shard-1"


def test_counts_are_strings_and_a_zero_count_is_left_out() -> None:
    doc = {"name": NAME, "state": "JOB_STATE_SUCCEEDED", "completionStats": {"successfulCount": "98", "failedCount": "2"},
           "outputInfo": {"gcsOutputDirectory": "gs://b/p/shard-1/output/prediction-model-2026-12-07T00:00:00Z"}}  # fmt: skip
    info = job_info(doc)
    assert info is not None
    assert (info.stats.requests, info.stats.succeeded, info.stats.failed, info.stats.pending) == (100, 98, 2, 0)
    assert info.responses_file == "gs://b/p/shard-1/output/prediction-model-2026-12-07T00:00:00Z"
    running = job_info({"name": NAME, "state": "JOB_STATE_RUNNING"})
    assert running is not None and running.stats.succeeded == 0 and running.responses_file is None
    failed = job_info({"name": NAME, "state": "JOB_STATE_FAILED", "error": {"code": 13, "message": "Internal"}})
    assert failed is not None and failed.error == "Internal (code 13)"


def test_anything_but_a_job_resource_is_refused() -> None:
    assert job_info({"name": "batches/123", "state": "JOB_STATE_RUNNING"}) is None  # a Gemini batch
    assert job_info({"state": "JOB_STATE_RUNNING"}) is None and job_info([]) is None


def test_the_input_carries_the_key_at_the_top_and_in_the_labels(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = Request("gemini-3.1-flash-lite-image", "a red mug", "1K", "16x9")
    bad = Request("gemini-3.1-flash-lite-image", "a mug", "1K", "16x9", ("https://example.com/a.png",))
    written = write_shard(path, [("a" * 32, good), ("b" * 32, bad)])
    (line,) = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert line["key"] == "a" * 32 and line["request"]["labels"] == {KEY_LABEL: "a" * 32}
    assert line["request"]["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"
    assert written.lines == 1 and [k for k, _ in written.invalid] == ["b" * 32]
    with pytest.raises(ValueError, match="twice"):
        write_shard(path, [("k", good), ("k", good)])


def _line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_output_lines_are_judged_as_online_replies() -> None:
    image = {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]},
                             "finishReason": "STOP"}], "responseId": "r1"}  # fmt: skip
    got = parse_line(_line(key="k1", request={}, response=image, status=""))
    assert got.kind is LineKind.IMAGE and got.key == "k1" and got.image is not None and got.response_id == "r1"
    refused = {"candidates": [{"content": {"parts": []}, "finishReason": "IMAGE_SAFETY"}]}
    assert parse_line(_line(key="k2", response=refused, status="")).kind is LineKind.REFUSED
    blocked = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}
    assert parse_line(_line(key="k3", response=blocked, status="")).kind is LineKind.REFUSED
    status = 'Internal Server Error: {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}'
    failed = parse_line(_line(key="k4", request={}, status=status))
    assert failed.kind is LineKind.FAILED and failed.failure is FailureKind.GENERATION and failed.error_code == 13
    invalid = parse_line(_line(key="k5", status='Bad Request: {"error": {"code": 400, "message": "bad"}}'))
    assert invalid.failure is FailureKind.INVALID and invalid.error_code == 3
    by_label = parse_line(_line(request={"labels": {KEY_LABEL: "k6"}}, response=image, status=""))
    assert by_label.key == "k6" and by_label.kind is LineKind.IMAGE
    assert parse_line(_line(key="k7", status="")).kind is LineKind.MALFORMED  # neither a response nor an error
    assert parse_line(b"not json").kind is LineKind.MALFORMED
