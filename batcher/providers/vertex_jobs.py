"""Vertex AI batch prediction's files and resources, read as the REST API writes them: the JSONL a job reads, the
BatchPredictionJob resource, and the lines of the JSONL files it writes.

The input: one ``{"key": K, "request": GenerateContentRequest}`` line per task, the key also in the request's
`labels` (`batcher_key`), so a line whose top-level fields were not echoed can still be matched.

The resource has no `done` field: a job has ended when its state is terminal. `completionStats` counts are int64
written as strings, and a zero count is left out. Job names carry the project's number, not its id.

An output line echoes the input's fields and `request`, then either `response` (a GenerateContentResponse, judged
exactly as online and as a Gemini batch line is) with `"status": ""`, or no response and `status` holding the error:
a phrase, then Google's error body as JSON text (``Bad Request: {"error": {"code": 400, ...}}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batcher.providers import google_wire
from batcher.providers.base import (
    BatchInfo,
    BatchState,
    BatchStats,
    FailureKind,
    LineKind,
    Request,
    ResultLine,
    ShardWritten,
    write_shard_lines,
)
from batcher.providers.google_results import judged_line
from batcher.providers.google_wire import DETAIL_CHARS, int64, request_body, status_message

KEY_LABEL = "batcher_key"  # the task key in request.labels (label values: lowercase letters, digits, _ and -)
JOB_NAME = re.compile(r"^projects/[^/]+/locations/[^/]+/batchPredictionJobs/[^/]+$")
_STATES = {
    "JOB_STATE_QUEUED": BatchState.PENDING,
    "JOB_STATE_PENDING": BatchState.PENDING,
    "JOB_STATE_PAUSED": BatchState.PENDING,
    "JOB_STATE_UPDATING": BatchState.PENDING,
    "JOB_STATE_RUNNING": BatchState.RUNNING,
    "JOB_STATE_CANCELLING": BatchState.RUNNING,  # not ended: rows still finish (and bill) until CANCELLED
    "JOB_STATE_SUCCEEDED": BatchState.SUCCEEDED,
    # Some rows failed: each has its `status` in the output, read line by line like a succeeded job's. Rows
    # never run are in no file; the runner sends those again, as it does the missing lines of any batch.
    "JOB_STATE_PARTIALLY_SUCCEEDED": BatchState.SUCCEEDED,
    "JOB_STATE_FAILED": BatchState.FAILED,
    "JOB_STATE_CANCELLED": BatchState.CANCELLED,
    "JOB_STATE_EXPIRED": BatchState.EXPIRED,
}
# google.rpc.Code by its name, for a failed line's error (which Vertex writes with the HTTP code)
_GRPC = {"INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "PERMISSION_DENIED": 7,
         "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14}  # fmt: skip


# --- the input file ---------------------------------------------------------------------------------


def write_shard(path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
    """A job's JSONL input, one line per item, one line in memory at a time. A request that cannot go on the wire
    is left out and named in `invalid`; a key seen twice raises ValueError (results are matched by key)."""

    def line(key: str, request: Request) -> dict[str, Any]:
        body = request_body(request)
        body["labels"] = {KEY_LABEL: key}  # echoed back too: the key where a line lost its own
        return {"key": key, "request": body}

    return write_shard_lines(path, items, line)


# --- the job resource -------------------------------------------------------------------------------


def job_info(doc: object) -> BatchInfo | None:
    """A BatchPredictionJob as the generic BatchInfo; None when `doc` is not one. `responses_file` is the folder
    the job writes its JSONL files in (`outputInfo.gcsOutputDirectory`), once it has one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not JOB_NAME.match(doc["name"]):
        return None
    raw = doc.get("completionStats")
    raw = raw if isinstance(raw, dict) else {}
    succeeded, failed = int64(raw, "successfulCount"), int64(raw, "failedCount")
    incomplete = int64(raw, "incompleteCount")
    stats = BatchStats(succeeded + failed + incomplete, succeeded, failed, incomplete)
    state = doc.get("state")
    output = doc.get("outputInfo")
    folder = output.get("gcsOutputDirectory") if isinstance(output, dict) else None
    error = doc.get("error")
    message = status_message(error, "the job failed")
    display = doc.get("displayName")
    return BatchInfo(
        name=doc["name"],
        display_name=display if isinstance(display, str) else "",
        state=_STATES.get(state, BatchState.UNSPECIFIED) if isinstance(state, str) else BatchState.UNSPECIFIED,
        stats=stats,
        responses_file=folder if isinstance(folder, str) and folder.startswith("gs://") else None,
        error=message,
    )


# --- an output line ---------------------------------------------------------------------------------


def _key(doc: dict[str, Any]) -> str | None:
    """The echoed key; where a line lacks it, the one in its request's labels."""
    key = doc.get("key")
    if isinstance(key, str):
        return key
    request = doc.get("request")
    labels = request.get("labels") if isinstance(request, dict) else None
    label = labels.get(KEY_LABEL) if isinstance(labels, dict) else None
    return label if isinstance(label, str) else None


def _failed(key: str | None, status: str) -> ResultLine:
    """A row answered with an error: `status` is a phrase, then Google's error body as JSON text."""
    head, brace, rest = status.partition("{")
    error: dict[str, Any] = {}
    if brace:
        try:
            body = json.loads(brace + rest)
        except ValueError:
            body = None
        found = body.get("error") if isinstance(body, dict) else None
        error = found if isinstance(found, dict) else {}
    name = str(error.get("status") or "")
    http = error.get("code") if isinstance(error.get("code"), int) else None
    message = str(error.get("message") or head.strip(" :") or status)[:DETAIL_CHARS]
    invalid = name == "INVALID_ARGUMENT" or http == 400
    code = _GRPC.get(name, 3 if http == 400 else None)
    said = f" ({name or f'HTTP {http}'})" if name or http else ""
    return ResultLine(key, LineKind.FAILED, reason=f"the line failed: {message}{said}",
                      failure=FailureKind.INVALID if invalid else FailureKind.GENERATION, error_code=code)  # fmt: skip


def parse_line(raw: bytes) -> ResultLine:
    """One output line, judged as the online reply would be."""
    doc = google_wire.parse_line(raw)  # the image's base64 cut out before parsing, as an online reply's is
    if doc is None:
        return ResultLine(None, LineKind.MALFORMED, reason="a results line that is not a JSON object")
    key = _key(doc)
    response = doc.get("response")
    status = doc.get("status")
    if not isinstance(response, dict):
        if isinstance(status, str) and status.strip():
            return _failed(key, status)
        return ResultLine(key, LineKind.MALFORMED, reason="a results line with neither a response nor a status")
    return judged_line(key, response)
