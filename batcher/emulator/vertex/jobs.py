"""Batch prediction jobs and their timeline, with the clock passed in (no HTTP, no storage here).

A job's fate is drawn when it is created: how long it runs (`batch_latency`), whether it fails half-way or ends
PARTIALLY_SUCCEEDED, and each row's outcome once its input is read. Its state is then a function of the clock:
QUEUED for `batch_queued_s`, PENDING for the first tenth of its run time, RUNNING while its rows finish one
after another, then SUCCEEDED (or FAILED, PARTIALLY_SUCCEEDED); one that would not be done `batch_expiry_s`
after creation ends EXPIRED having run nothing. A cancel makes it CANCELLING for `batch_cancel_s`, then
CANCELLED. Creation is not idempotent: every create is a new job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from batcher.emulator.gemini.files import rfc3339
from batcher.emulator.gemini.request import GenerateSpec

RowFate = Literal["image", "refused", "failed"]
QUEUED = "JOB_STATE_QUEUED"
PENDING = "JOB_STATE_PENDING"
RUNNING = "JOB_STATE_RUNNING"
SUCCEEDED = "JOB_STATE_SUCCEEDED"
FAILED = "JOB_STATE_FAILED"
CANCELLING = "JOB_STATE_CANCELLING"
CANCELLED = "JOB_STATE_CANCELLED"
PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"
EXPIRED = "JOB_STATE_EXPIRED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, PARTIALLY_SUCCEEDED, EXPIRED})
PENDING_SHARE = 0.1  # share of a job's run time spent PENDING before RUNNING
FAIL_AT_SHARE = 0.5  # a failing job fails this far through its running time
PARTIAL_SHARE = 0.9  # a partially succeeded job runs only this share of its rows
GRPC_INVALID_ARGUMENT = 3
GRPC_INTERNAL = 13
NEVER = math.inf


@dataclass(slots=True)
class Row:
    """One line of the input: its fields (echoed in the output), its key for billing, and its outcome."""

    fields: dict[str, Any]
    key: str
    spec: GenerateSpec | None
    status: str = ""  # the error of a failed row, as the output line's `status` writes it
    fate: RowFate = "image"
    done_at: float = NEVER  # emulator clock; NEVER: not run before the job ended
    file_index: int = 0
    exported: bool = False


@dataclass(slots=True)
class Job:
    """One batch prediction job."""

    job_id: str
    project_number: str
    location: str
    display_name: str
    model: str  # the model id
    echo: dict[str, Any]  # fields of the create body the resource echoes (model, inputConfig, outputConfig, labels)
    input_uris: list[str]
    output_prefix: str  # gs://bucket/prefix
    created_at: float
    pending_at: float  # end of QUEUED
    running_at: float
    finishes_at: float  # when it would end, if not cancelled, failed or expired first
    expires_at: float
    fails: bool
    partial: bool
    cancel_s: float
    cancelled_at: float | None = None
    rows: list[Row] | None = None  # read when it starts running
    error: str | None = None  # why it failed
    output_dir: str | None = None  # gs://.../prediction-model-<time>/
    files: dict[int, list[bytes]] = field(default_factory=dict)  # output file index -> its lines
    output_files: int = 1  # how many files its rows are spread across, fixed when it starts
    ended: str | None = None
    deleted: bool = False

    @property
    def name(self) -> str:
        return f"projects/{self.project_number}/locations/{self.location}/batchPredictionJobs/{self.job_id}"

    def expires(self) -> bool:
        return self.running_at >= self.expires_at

    def stops_at(self) -> float:
        """When its run ends by itself: the failure point of a failing job, else its finish."""
        if self.fails or self.error is not None:
            return self.running_at + FAIL_AT_SHARE * (self.finishes_at - self.running_at)
        return self.finishes_at

    def state(self, now: float) -> str:
        if self.ended is not None:
            return self.ended
        if self.cancelled_at is not None:
            return CANCELLING if now < self.cancelled_at + self.cancel_s else CANCELLED
        if self.expires() and now >= self.expires_at:
            return EXPIRED
        if now < self.pending_at:
            return QUEUED
        if now < self.running_at:
            return PENDING
        if self.error is not None and self.rows is None:
            return FAILED  # its input could not be read
        if now >= self.stops_at():
            if self.fails or self.error is not None:
                return FAILED
            return PARTIALLY_SUCCEEDED if self.partial else SUCCEEDED
        return RUNNING

    def end_time(self) -> float:
        """When it reached its terminal state (valid once `state` is terminal)."""
        if self.cancelled_at is not None:
            return self.cancelled_at + self.cancel_s
        if self.expires():
            return self.expires_at
        if self.rows is None:
            return self.running_at
        return self.stops_at()

    def work_ends(self) -> float:
        """The last moment rows may finish: a cancel, a failure or the end of the run."""
        end = self.stops_at()
        return min(end, self.cancelled_at) if self.cancelled_at is not None else end

    def resource(self, now: float, offset_s: float) -> dict[str, Any]:
        """The BatchPredictionJob as the REST API writes it: int64 counts as strings, zero counts left out,
        no `done` field."""
        state = self.state(now)
        out: dict[str, Any] = {"name": self.name, "displayName": self.display_name, **self.echo, "state": state}
        out["createTime"] = rfc3339(self.created_at + offset_s)
        if self.output_dir is not None:
            out["outputInfo"] = {"gcsOutputDirectory": self.output_dir.rstrip("/")}
        if self.rows is not None:
            out["startTime"] = rfc3339(self.running_at + offset_s)
            out["completionStats"] = self._stats(state in TERMINAL)
        if state in TERMINAL:
            out["endTime"] = rfc3339(self.end_time() + offset_s)
        out["updateTime"] = rfc3339(min(now, self.end_time() if state in TERMINAL else now) + offset_s)
        if state == FAILED:
            out["error"] = {"code": GRPC_INTERNAL, "message": self.error or "Internal error occurred. The job failed."}
        return out

    def _stats(self, ended: bool) -> dict[str, str]:
        rows = self.rows or []
        counts = {
            "successfulCount": sum(1 for r in rows if r.exported and r.fate != "failed"),
            "failedCount": sum(1 for r in rows if r.exported and r.fate == "failed"),
            "incompleteCount": sum(1 for r in rows if not r.exported) if ended else 0,
        }
        return {k: str(n) for k, n in counts.items() if n}
