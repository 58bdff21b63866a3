"""The plain objects the Python API returns: a job's outcome with one record per task, and the progress figures."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from batcher.money import micros_to_usd

if TYPE_CHECKING:
    from batcher.runner import Progress as RunnerProgress


@dataclass(frozen=True)
class TaskResult:
    """One task of a job, as the store holds it after the call."""

    name: str
    """What a person calls the task: its `name`, else its output file name, else its manifest line."""
    key: str
    """The task's content key (a hash of what is generated): the same spec has the same key in any job."""
    status: str
    """pending, submitting, submitted, unknown, succeeded, failed or retired."""
    file: str | None
    """Where its image is (a path, or a URI where the job writes to object storage); None until it succeeded."""
    sha256: str | None
    """The image file's SHA-256, hex."""
    bytes: int | None
    """The image file's size."""
    cost_usd: Decimal
    """What the task was billed."""
    error: str | None
    """Why the task failed or waits (its last error), None once it succeeded."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskResult:
        """From a row of the report (batcher.report.rows)."""
        return cls(str(row["task"]), str(row["key"]), str(row["status"]), row["file"], row["sha256"], row["bytes"],
                   Decimal(str(row["cost_usd"])), row["error"])  # fmt: skip


@dataclass(frozen=True)
class JobResult:
    """What `run`, `arun` and `report` return: a job's counts, its cost, and one TaskResult per task."""

    job: str
    """The job's name."""
    succeeded: int
    """Tasks that have their image."""
    failed: int
    """Tasks that failed for good (`retry` puts them back to work)."""
    pending: int
    """Tasks not final yet (a budget or quota stop, tasks held by another provider or by a batch)."""
    cost_usd: Decimal
    """Everything the job was billed, both routes."""
    online_cost_usd: Decimal
    """Of `cost_usd`: billed by online calls."""
    batch_cost_usd: Decimal
    """Of `cost_usd`: billed by Batch Mode."""
    unknown_submissions: int
    """Creates whose outcome was never seen (possibly billed twice)."""
    tasks: list[TaskResult] = field(repr=False)
    """One record per task, in manifest order."""
    summary: dict[str, Any] = field(repr=False)
    """The whole summary, as `batcher report --format json` prints it."""
    stopped: str = "done"
    """Why the run ended: done, budget, submitted (batch, `wait=False`); `report`: done."""

    @classmethod
    def of(cls, head: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], stopped: str = "done") -> JobResult:
        """From a job's summary (batcher.report.summary) and its report rows."""
        return cls(
            job=str(head["job"]), succeeded=int(head["succeeded"]), failed=int(head["failed"]),
            pending=int(head["pending"]), cost_usd=Decimal(head["cost_usd"]),
            online_cost_usd=Decimal(head["online_cost_usd"]), batch_cost_usd=Decimal(head["batch_cost_usd"]),
            unknown_submissions=int(head["unknown_submissions"]), tasks=[TaskResult.from_row(r) for r in rows],
            summary=dict(head), stopped=stopped,
        )  # fmt: skip

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per task (the fields of TaskResult)."""
        return [asdict(t) for t in self.tasks]

    def to_pandas(self) -> Any:
        """The tasks as a pandas DataFrame, one row per task. pandas is not a dependency of batcher: install it
        (`pip install pandas`) to use this."""
        try:
            import pandas
        except ImportError:
            raise ImportError("JobResult.to_pandas() needs pandas, which batcher does not install: "
                              "pip install pandas (or use to_records())") from None  # fmt: skip
        return pandas.DataFrame.from_records(self.to_records(), columns=list(TaskResult.__dataclass_fields__))


@dataclass(frozen=True)
class Progress:
    """The figures the terminal's progress line shows, handed to `on_progress` about twice a second."""

    job: str
    total: int
    """The job's tasks."""
    done: int
    """Final (succeeded or failed), this run's and earlier runs'."""
    succeeded: int
    """Succeeded in this run."""
    failed: int
    """Failed in this run."""
    in_flight: int
    """Between create and download now."""
    requests: int
    """API requests this run sent (creates and checks)."""
    requests_per_second: float
    """API requests per second, this run (the req/s the terminal shows)."""
    spent_usd: Decimal
    """What the job has cost so far."""
    detail: str
    """What else the line says (the batch route's shards; what the run waits for, when nothing is in flight)."""

    @classmethod
    def of(cls, job: str, p: RunnerProgress) -> Progress:
        elapsed = max(time.monotonic() - p.started, 1e-6)
        return cls(job, p.total, p.done_before + p.succeeded + p.failed, p.succeeded, p.failed, p.in_flight,
                   p.requests, round(p.requests / elapsed, 3), micros_to_usd(p.spent_micros), p.detail)  # fmt: skip


@dataclass(frozen=True)
class Status:
    """What `status` returns: every job's tasks per status, the live workers, the recent batch shards."""

    jobs: dict[str, dict[str, int]]
    """Job name → status → tasks."""
    workers: list[dict[str, Any]]
    """The workers at work (id, host, pid, jobs, heartbeat_at, holds)."""
    shards: list[dict[str, Any]]
    """Recent Batch Mode shards (job, display_name, state, requests, remote_name, detail)."""
