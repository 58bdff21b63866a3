"""The job store: every SQL statement batcher runs lives in this package (SQLite and PostgreSQL alike).

`Store` is assembled from one part per concern; each part is one module beside this one. Every change of a
task's state is fenced by the claim token its worker holds (`WHERE id = :id AND claim_token = :token`): a worker
whose lease expired and was taken over can no longer write, so a task taken over has one writer only.
"""

from batcher.store.base import BudgetRefused, ClaimLost, ImportResult, Job, Ledger, Stray, StrayReply, Task
from batcher.store.cache import CachedOutput, CachePart
from batcher.store.claims import QUOTA_WAIT, ClaimsPart, QuotaPart, quota_note
from batcher.store.jobs import JobsPart
from batcher.store.reports import ReportsPart
from batcher.store.retries import RetriesPart, RetryPlan
from batcher.store.shard_duplicates import ShardDuplicatesPart
from batcher.store.shard_reads import ShardReadsPart
from batcher.store.shared import SharedPart
from batcher.store.submissions import DuplicateShard, ShardMoved, Submission, SubmissionsPart


class Store(
    JobsPart,
    ClaimsPart,
    QuotaPart,
    CachePart,
    SubmissionsPart,
    ShardReadsPart,
    ShardDuplicatesPart,
    SharedPart,
    ReportsPart,
    RetriesPart,
):
    """A job store on SQLite or PostgreSQL. Open with `await Store.open(db)`; close with `await close()`."""


__all__ = [
    "QUOTA_WAIT",
    "BudgetRefused",
    "CachedOutput",
    "ClaimLost",
    "DuplicateShard",
    "ImportResult",
    "Job",
    "Ledger",
    "RetryPlan",
    "ShardMoved",
    "Store",
    "Stray",
    "StrayReply",
    "Submission",
    "Task",
    "quota_note",
]
