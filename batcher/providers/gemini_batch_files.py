"""Gemini Batch Mode's file formats: the requests file written for a shard, each results line judged, and a batch
resource (an Operation, or the bare batch) read as the generic BatchInfo.

A requests line is ``{"key": K, "request": GenerateContentRequest}``; a results line ``{"key": K, "response":
GenerateContentResponse}`` or ``{"key": K, "error": google.rpc.Status}``, judged as the online reply would be
(google_wire.read_response), so a refusal online is a refusal in a batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
from batcher.providers.google_wire import (
    DETAIL_CHARS,
    int64,
    parse_line,
    request_body,
    status_message,
)

GRPC_INVALID_ARGUMENT = 3  # a line's error is a google.rpc.Status: gRPC codes, not HTTP statuses
_STATE_PREFIXES = ("BATCH_STATE_", "JOB_STATE_")


def write_shard(path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
    """Write a batch's JSONL input, one ``{"key", "request"}`` line per item, one line in memory at a time.
    A request that cannot go on the wire (a URL input image, a size with no aspect ratio) is left out and
    named in `invalid`; a key seen twice raises ValueError (results are matched by key)."""
    return write_shard_lines(path, items, lambda key, request: {"key": key, "request": request_body(request)})


def parse_result_line(raw: bytes) -> ResultLine:
    """One ``{"key", "response"}`` or ``{"key", "error"}`` line, judged as the online reply would be."""
    doc = parse_line(raw)  # the image's base64 cut out before parsing, as an online reply's is
    if doc is None:
        return ResultLine(None, LineKind.MALFORMED, reason="a results line that is not a JSON object")
    key = doc.get("key")
    key = key if isinstance(key, str) else None
    error = doc.get("error")
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), int) else None
        message = str(error.get("message") or "no message")[:DETAIL_CHARS]
        kind = FailureKind.INVALID if code == GRPC_INVALID_ARGUMENT else FailureKind.GENERATION
        reason = f"the line failed: {message}" + (f" (code {code})" if code is not None else "")
        return ResultLine(key, LineKind.FAILED, reason=reason, failure=kind, error_code=code)
    response = doc.get("response")
    if not isinstance(response, dict):
        return ResultLine(key, LineKind.MALFORMED, reason="a results line with neither response nor error")
    return judged_line(key, response)


# --- reading a batch --------------------------------------------------------------------------------


def _state(raw: object, doc: dict[str, Any]) -> BatchState:
    text = raw if isinstance(raw, str) else ""
    for prefix in _STATE_PREFIXES:
        text = text.removeprefix(prefix)
    try:
        return BatchState(text)
    except ValueError:
        pass
    if doc.get("done") is True:  # no state we know, but the Operation says it is over
        return BatchState.FAILED if isinstance(doc.get("error"), dict) else BatchState.SUCCEEDED
    return BatchState.UNSPECIFIED


def batch_info(doc: object) -> BatchInfo | None:
    """A batch from its Operation ({name, metadata, done, response | error}), or from the bare batch."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"].startswith("batches/"):
        return None
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else doc
    raw_stats = meta.get("batchStats")
    raw_stats = raw_stats if isinstance(raw_stats, dict) else {}
    stats = BatchStats(
        int64(raw_stats, "requestCount"),
        int64(raw_stats, "successfulRequestCount"),
        int64(raw_stats, "failedRequestCount"),
        int64(raw_stats, "pendingRequestCount"),
    )
    responses: object = None
    for holder in (doc.get("response"), meta.get("output"), doc.get("output")):
        if isinstance(holder, dict) and isinstance(holder.get("responsesFile"), str):
            responses = holder["responsesFile"]
            break
    error = doc.get("error")
    message = status_message(error, "the batch failed")
    display = meta.get("displayName")
    return BatchInfo(
        name=doc["name"],
        display_name=display if isinstance(display, str) else "",
        state=_state(meta.get("state"), doc),
        stats=stats,
        responses_file=responses if isinstance(responses, str) else None,
        error=message,
    )
