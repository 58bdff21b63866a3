"""The runner: a pool of tasks driven through one provider (pool), each along its lifecycle (lifecycle),
under leases this worker renews and claims it makes in batches (leases)."""

from batcher.runner.base import Progress, RunResult, StopReason
from batcher.runner.leases import RATE_LIMIT_KEY, rate_limit_key
from batcher.runner.pool import Runner

__all__ = ["RATE_LIMIT_KEY", "Progress", "RunResult", "Runner", "StopReason", "rate_limit_key"]
