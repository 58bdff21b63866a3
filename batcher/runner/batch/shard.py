"""What every part of the batch runner shares: its settings, a shard as a worker holds it, its progress, and the
small steps (timing, faults, logging a call) each part takes on a shard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batcher.config import RunConfig
from batcher.errors import AuthError, BatcherError
from batcher.models import CallRecord
from batcher.outputs import Finisher
from batcher.providers.base import BatchClient, BatchInfo, BatchState
from batcher.retry import backoff_s
from batcher.runner.base import Progress, log
from batcher.runner.batch_bucket import shard_folder
from batcher.storage import is_remote
from batcher.store import Job, Store, Task
from batcher.store.submissions import CREATING, PLANNED, UPLOADED, Submission

SHARDS_DIR = ".batcher-shards"  # under the output directory: each shard's requests file until its batch exists
PLAN_AHEAD = 16  # shards planned but not yet created, at most
UNSENT = (PLANNED, UPLOADED, CREATING)
IDLE_S = 10.0  # the longest sleep while batches run, between looks at the store and the clock, seconds
PROVIDER_FAULT_S = 10.0  # after a transient fault (503 on get or download, a failed listing), at least this
CREATE_GRACE_S = 180.0  # a batch may be missing from the listing this long after its create: absence proves nothing
SHARD_REQUESTS = 100  # lines of a shard unless the manifest says (`batch: max_requests`)
SHARD_BYTES = 100_000_000  # bytes of its requests file unless the manifest says (`batch: max_bytes`)
ENDED = frozenset(s.value for s in BatchState if s.is_done)  # a shard's recorded remote state, once it ended
MAX_REUPLOADS = 3  # a requests file the API dropped before its create, uploaded again at most this often
GRACE_LISTINGS = 3  # complete listings without the batch, the last past the grace period, before creating again


def shards_dir(job: Job) -> Path:
    """Where a job's shard requests files wait for their upload: under a local output directory, or in this
    machine's temporary folder when the outputs are in a bucket (batch_bucket.py)."""
    if is_remote(job.output_dir):
        return shard_folder(job, SHARDS_DIR)
    return Path(job.output_dir).resolve() / SHARDS_DIR


@dataclass(frozen=True)
class BatchSettings:
    # a shard's lines and bytes at most (None: these defaults: small batches, so a lost one costs little), kept
    # within the provider's own limits (BatchClient.limits)
    max_requests: int | None = None
    max_bytes: int | None = None
    wait: bool = True  # `--no-wait`: exit once every shard is created
    deadline_at: float | None = None  # epoch seconds: cancel what is not done by then, to run online
    create_grace_s: float = CREATE_GRACE_S  # how long a listing may lag behind a create


@dataclass
class Shard:
    sub: Submission
    tasks: dict[str, Task]  # the shard's unsettled tasks this worker holds, by key
    checks: int = 0
    due: float = 0.0  # when to look at it next (epoch seconds)
    faults: int = 0
    stats: str = ""
    info: BatchInfo | None = None  # the batch as last seen, once it has ended
    done_at_api: int = 0  # its requests the API reports done (batchStats: succeeded + failed)
    anchor: Task | None = None  # the task its calls are logged under (the ledger's rows name a task)
    absent_listings: int = 0  # complete listings that did not show its batch, while in `creating`
    reuploads: int = 0  # times its requests file was uploaded again (the API had dropped it)
    # sent again after the grace period, or carried on from the store (where that cannot be known): a late
    # batch of the first create may show up, looked for before the shard closes
    recreated: bool = False

    def __post_init__(self) -> None:
        self.anchor = next(iter(self.tasks.values()), None)


@dataclass
class BatchProgress(Progress):
    shards_open: int = 0
    shards_done: int = 0
    lines_done: int = 0
    lines_total: int = 0
    shard_states: dict[str, int] = field(default_factory=dict)


class ShardWork:
    """The state and small steps every part of the runner uses; the parts (planning, steps, collecting,
    cancelling) are mixed into BatchRunner over this."""

    store: Store
    client: BatchClient
    job: Job
    config: RunConfig
    batch: BatchSettings
    prices: dict[str, int]
    worker_id: str
    clock: Callable[[], float]
    output_dir: Path
    output_root: str  # the output directory, or a bucket URI (`remote`)
    remote: bool
    work_dir: Path
    progress: BatchProgress
    shards: dict[int, Shard]
    max_requests: int  # a shard's lines and bytes at most: the manifest's, within the provider's limits
    max_bytes: int
    _wake: asyncio.Event
    _stopping: bool
    _fatal: BatcherError | None
    _finisher: Finisher
    _budget_blocked: bool
    _more_to_plan: bool

    def _now(self) -> float:
        return self.clock() + self.store.clock_offset

    def _later(self, shard: Shard, seconds: float) -> None:
        shard.due = self._now() + seconds

    def _fault(self, shard: Shard, what: str) -> None:
        """A transient fault of the API: try this step again later, with backoff; never anything more."""
        shard.faults += 1
        wait = max(PROVIDER_FAULT_S, backoff_s(shard.faults, self.config.retry, 0.5))
        log.warning("shard %s: %s; trying again in %.0f s", shard.sub.display_name, what, wait)
        self._later(shard, min(wait, 300.0))

    def _auth(self, message: str) -> None:
        raise AuthError.rejected(message, self.client.key_env)

    def _log_shard_call(self, shard: Shard, call: CallRecord) -> None:
        """A shard's call goes in the ledger under one of its tasks (the ledger's rows name a task)."""
        if shard.anchor is not None:
            self.store.log_call(shard.anchor, call)

    # Each defined by one part; declared here so the parts can call one another.
    async def _advance(self, shard: Shard) -> None:
        raise NotImplementedError

    async def _collect(self, shard: Shard) -> None:
        raise NotImplementedError

    async def _abandon(self, shard: Shard, state: str, reason: str, *, maybe_billed: bool = False) -> None:
        raise NotImplementedError

    async def _ended(self, shard: Shard, info: BatchInfo, *, gone: bool = False, unseen: bool = False) -> None:
        raise NotImplementedError

    async def _ended_outliving(self, shard: Shard, why: str) -> bool:
        raise NotImplementedError

    async def _take_duplicates(self) -> None:
        raise NotImplementedError

    async def _record_duplicates(self, shard: Shard, names: list[str]) -> None:
        raise NotImplementedError

    async def _late_duplicates(self, shard: Shard) -> None:
        raise NotImplementedError
