"""Batch Mode's jobs and their lifecycle, with the clock passed in (no HTTP here).

A batch's fate is drawn when it is created: when it finishes (`batch_latency`), whether it ends FAILED, and
each line's outcome. Its state is then a function of the clock: PENDING for the first tenth of its time,
RUNNING, then SUCCEEDED (or FAILED); one not done `batch_expiry_s` after creation ends EXPIRED. Creation is
not idempotent: every create is a new batch, billed on its own. Each image line of a succeeded batch is billed
(at half the online price). With `batch_partial_lines` each line also draws when it finishes while the batch
runs, and a batch that ends any other way keeps (and bills) the lines it finished by then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from batcher.emulator.gemini.files import rfc3339
from batcher.emulator.gemini.request import BadRequest, GenerateSpec, parse_generate
from batcher.emulator.gemini.request import field as pick

LineFate = Literal["image", "refused", "failed"]
PENDING = "BATCH_STATE_PENDING"
RUNNING = "BATCH_STATE_RUNNING"
SUCCEEDED = "BATCH_STATE_SUCCEEDED"
FAILED = "BATCH_STATE_FAILED"
CANCELLED = "BATCH_STATE_CANCELLED"
EXPIRED = "BATCH_STATE_EXPIRED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
PENDING_SHARE = 0.1  # share of a batch's time spent PENDING before RUNNING
GRPC_INVALID_ARGUMENT = 3  # google.rpc.Status codes are gRPC codes, not HTTP statuses
GRPC_INTERNAL = 13


@dataclass(slots=True)
class BatchLine:
    """One request of the input file: its key, and its spec or why it is invalid."""

    key: str
    spec: GenerateSpec | None
    error: str = ""
    fate: LineFate = "image"
    done_at: float | None = None  # when it finished while the batch ran; None: only if the batch succeeds


@dataclass(slots=True)
class Batch:
    """One batch job."""

    name: str  # batches/<id>
    display_name: str
    model: str
    input_file: str
    lines: list[BatchLine]
    created_at: float  # emulator clock
    finishes_at: float  # when it would be done, if it neither expires nor is cancelled first
    expires_at: float
    fails: bool  # ends FAILED instead of SUCCEEDED
    fails_at: float = 0.0  # when it fails, if it does (0: when it would have finished)
    cancelled_at: float | None = None
    ended: str | None = None  # the terminal state once settled
    deleted: bool = False  # hidden from get and list; it still runs and is billed, as deleting an operation does
    results_file: str | None = None
    file_lines: tuple[int, ...] = ()  # indices of the lines its responses file holds, once it has one
    results_gone_status: int | None = None  # its responses file is gone, answering this, once it is made

    def _done_at(self) -> float:
        """When it succeeds or fails, unless it expires or is cancelled first."""
        return (self.fails_at or self.finishes_at) if self.fails else self.finishes_at

    def running_from(self) -> float:
        return self.created_at + PENDING_SHARE * (self.finishes_at - self.created_at)

    def state(self, now: float) -> str:
        if self.ended is not None:
            return self.ended
        if self.cancelled_at is not None:
            return CANCELLED
        done_at = self._done_at()
        if now >= done_at and done_at < self.expires_at:
            return FAILED if self.fails else SUCCEEDED
        if now >= self.expires_at:
            return EXPIRED
        if now < self.running_from():
            return PENDING
        return RUNNING

    def end_time(self) -> float:
        """When it reached its terminal state (valid once `state` is terminal)."""
        if self.cancelled_at is not None:
            return self.cancelled_at
        return min(self._done_at(), self.expires_at)

    def finished(self, now: float) -> list[int]:
        """Indices of the lines finished by `now` (every line of a succeeded batch; no later than its end)."""
        state = self.state(now)
        if state == SUCCEEDED:
            return list(range(len(self.lines)))
        until = min(now, self.end_time()) if state in TERMINAL else now
        return [i for i, line in enumerate(self.lines) if line.done_at is not None and line.done_at <= until]

    def counts(self, now: float) -> dict[str, int]:
        """requestCount, successfulRequestCount, failedRequestCount, pendingRequestCount."""
        total = len(self.lines)
        finished = self.finished(now)
        failed = sum(1 for i in finished if self.lines[i].fate == "failed")
        pending = 0 if self.state(now) in TERMINAL else total - len(finished)
        return {"request": total, "successful": len(finished) - failed, "failed": failed, "pending": pending}


def parse_lines(data: bytes, model: str, max_image_bytes: int, max_images: int) -> list[BatchLine]:
    """The JSONL input: one ``{"key", "request"}`` a line; a line that does not parse becomes a failed line."""
    lines: list[BatchLine] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        key = f"line-{number}"
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise BadRequest("a line must be a JSON object")
            key = str(record.get("key", key))
            spec = parse_generate(pick(record, "request"), model, max_image_bytes, max_images, lambda _: False)
        except (ValueError, BadRequest) as exc:
            lines.append(BatchLine(key, None, str(exc) or "invalid line", "failed"))
            continue
        lines.append(BatchLine(key, spec))
    return lines


BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"


def operation(batch: Batch, now: float, offset_s: float) -> dict[str, Any]:
    """The batch as a long-running Operation; int64 counts are strings, as protobuf JSON writes them."""
    state = batch.state(now)
    counts = batch.counts(now)
    metadata: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "name": batch.name,
        "model": f"models/{batch.model}",
        "displayName": batch.display_name,
        "inputConfig": {"fileName": batch.input_file},
        "state": state,
        "createTime": rfc3339(batch.created_at + offset_s),
        "updateTime": rfc3339(min(now, batch.end_time()) + offset_s),
        "batchStats": {
            "requestCount": str(counts["request"]),
            "successfulRequestCount": str(counts["successful"]),
            "failedRequestCount": str(counts["failed"]),
            "pendingRequestCount": str(counts["pending"]),
        },
    }
    out: dict[str, Any] = {"name": batch.name, "metadata": metadata}
    if state not in TERMINAL:
        return out
    metadata["endTime"] = rfc3339(batch.end_time() + offset_s)
    out["done"] = True
    if batch.results_file is not None:  # a partial one too, for a batch that ended otherwise
        metadata["output"] = {"responsesFile": batch.results_file}
    if state == FAILED:
        out["error"] = {"code": GRPC_INTERNAL, "message": "The batch failed."}
    elif batch.results_file is not None:
        out["response"] = {"@type": OUTPUT_TYPE, "responsesFile": batch.results_file}
    return out
