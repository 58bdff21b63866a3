"""The pure reading of Batch Mode: a batch from its Operation, and one line of a results file."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from batcher.providers.base import BatchState, FailureKind, LineKind
from batcher.providers.gemini_batch_files import batch_info, parse_result_line

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def line(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("BATCH_STATE_RUNNING", BatchState.RUNNING),
        ("JOB_STATE_SUCCEEDED", BatchState.SUCCEEDED),
        ("BATCH_STATE_EXPIRED", BatchState.EXPIRED),
        ("BATCH_STATE_SOMETHING_NEW", BatchState.UNSPECIFIED),
        (None, BatchState.UNSPECIFIED),
    ],
)
def test_states_in_either_spelling(raw: str | None, state: BatchState) -> None:
    info = batch_info({"name": "batches/a", "metadata": {"state": raw, "displayName": "d"}})
    assert info is not None and info.state is state and info.display_name == "d"


def test_a_done_operation_of_unknown_state_is_judged_by_its_error() -> None:
    failed = batch_info({"name": "batches/a", "done": True, "error": {"code": 13, "message": "boom"}})
    assert failed is not None and failed.state is BatchState.FAILED and failed.error == "boom (code 13)"
    done = batch_info({"name": "batches/a", "done": True, "response": {"responsesFile": "files/r"}})
    assert done is not None and done.state is BatchState.SUCCEEDED and done.responses_file == "files/r"


def test_counts_are_int64_strings_and_junk_counts_are_zero() -> None:
    stats = {"requestCount": "5", "successfulRequestCount": 3, "failedRequestCount": "x"}
    info = batch_info({"name": "batches/a", "metadata": {"batchStats": stats}})
    assert info is not None and (info.stats.requests, info.stats.succeeded, info.stats.failed) == (5, 3, 0)


@pytest.mark.parametrize("doc", [{"name": "operations/x"}, {"metadata": {}}, [], "batches/a"])
def test_what_is_not_a_batch(doc: Any) -> None:
    assert batch_info(doc) is None


def test_an_image_line() -> None:
    got = parse_result_line(
        line(
            {
                "key": "k",
                "response": {
                    "candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]}}],
                    "responseId": "r1",
                },
            }
        )
    )
    assert got.kind is LineKind.IMAGE and got.image is not None and got.image.data == base64.b64decode(PNG)
    assert got.key == "k" and got.response_id == "r1"


@pytest.mark.parametrize(
    ("response", "kind", "failure"),
    [
        ({"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, LineKind.REFUSED, FailureKind.BLOCKED),
        ({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, LineKind.REFUSED, FailureKind.BLOCKED),
        ({"candidates": [{"finishReason": "MAX_TOKENS"}]}, LineKind.FAILED, FailureKind.GENERATION),
        ({}, LineKind.MALFORMED, None),
    ],
)
def test_lines_without_an_image(response: dict[str, Any], kind: LineKind, failure: FailureKind | None) -> None:
    got = parse_result_line(line({"key": "k", "response": response}))
    assert (got.kind, got.failure, got.key) == (kind, failure, "k")


def test_error_lines_and_garbage() -> None:
    invalid = parse_result_line(line({"key": "k", "error": {"code": 3, "message": "bad request"}}))
    assert invalid.kind is LineKind.FAILED and invalid.failure is FailureKind.INVALID and invalid.error_code == 3
    internal = parse_result_line(line({"key": "k", "error": {"code": 13, "message": "oops"}}))
    assert internal.failure is FailureKind.GENERATION and "oops" in internal.reason
    assert parse_result_line(b"not json").kind is LineKind.MALFORMED
    assert parse_result_line(line({"key": "k"})).kind is LineKind.MALFORMED
