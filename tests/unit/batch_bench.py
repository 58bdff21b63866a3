"""The batch runner on the in-memory batch API (`batcher.providers.fake`) and a real SQLite store, in virtual time.

The runner's wall clock is the virtual loop's (`clock`), and so is the fake's: a batch that runs an hour, a
listing that lags three minutes and the create's grace period all pass in milliseconds, at exact instants. The
store's thread takes no virtual time (`virtual_time.run_threaded`). Money is checked against the fake's own
billing (per batch and key), never the ledger against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

from sqlalchemy.engine import RowMapping

from batcher.config import RunConfig
from batcher.models import JobSettings, import_batches
from batcher.providers.fake import FakeBatchClient
from batcher.providers.fake_batch import LINE_PRICE
from batcher.retry import RetryPolicy
from batcher.runner import RunResult
from batcher.runner.batch import BatchRunner, BatchSettings
from batcher.store import Ledger, Store
from batcher.store.submissions import Submission
from tests import virtual_time
from tests.integration.runner_kit import MODEL, specs

EPOCH = 1_800_000_000.0  # the runner's wall clock at virtual time 0
CONFIG = RunConfig(retry=RetryPolicy(base_s=1.0, cap_s=8.0))  # the real lease and heartbeat: time costs nothing
LIMIT_S = 48 * 3600.0  # virtual seconds a run may take before the test fails instead of hanging
# shards of three lines, so a few tasks make several; a create's grace period of 30 s, not 3 minutes: the runner
# looks for orphaned shards every 10 s, each look a few queries, so the less virtual time a test spans the faster
SMALL = BatchSettings(max_requests=3, create_grace_s=30.0)

P = ParamSpec("P")


def clock() -> float:
    """The runner's wall clock, and the fake's: the virtual loop's time from a fixed epoch."""
    return EPOCH + asyncio.get_running_loop().time()


def virtual(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on the virtual-time loop (not pytest-asyncio's)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        virtual_time.run_threaded(test(*args, **kwargs))

    return run


def fake_api(**knobs: Any) -> FakeBatchClient:
    """The fake batch API on the virtual clock; its batches run 20 s unless `run_s` says (ended by the second look:
    the runner looks 10 s after a create, then 15 s later)."""
    return FakeBatchClient(clock=clock, **{"run_s": 20.0, **knobs})


@dataclass
class Bench:
    """One job of `tasks` prompts (`prompt 0`...) in a SQLite store in tmp_path."""

    tmp: Path
    stores: list[Store] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.stores[0]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    async def runner(
        self, api: FakeBatchClient, batch: BatchSettings = SMALL, config: RunConfig = CONFIG, worker: str = "w1"
    ) -> BatchRunner:
        job = await self.store.job("job")
        return BatchRunner(self.store, api, job, config, batch, {MODEL: api.price_micros}, worker_id=worker,
                           clock=clock)  # fmt: skip

    async def run(self, api: FakeBatchClient, batch: BatchSettings = SMALL, **kw: Any) -> RunResult:
        runner = await self.runner(api, batch, **kw)
        async with api:
            return await asyncio.wait_for(runner.run(), LIMIT_S)

    async def rows(self) -> dict[str, RowMapping]:
        return {r["prompt"]: r async for r in self.store.task_rows(await self.store.job("job"))}

    async def ledger(self) -> Ledger:
        return await self.store.ledger(await self.store.job("job"))

    async def shards(self) -> list[Submission]:
        """Every shard of the job, oldest first."""
        return sorted((s for _, s in await self.store.recent_shards()), key=lambda s: s.id)


@contextlib.asynccontextmanager
async def bench(home: Path, tasks: int = 1) -> AsyncIterator[Bench]:
    b = Bench(home)
    b.stores.append(await Store.open(str(home / "batcher.db")))
    settings = JobSettings("job", str(b.out), route="batch")
    await b.store.import_manifest(settings, "test", import_batches(specs(tasks)), extra={}, now=EPOCH)
    try:
        yield b
    finally:
        for s in b.stores:
            await s.close()


async def assert_money_matches(b: Bench, api: FakeBatchClient, *, per_key: bool = True) -> Ledger:
    """The ledger bills what the fake API billed, line for line; `per_key`: each task as often as its key was
    billed (a task's own line, plus its known duplicates). Off where the runner cannot know which of a batch's
    missing lines were the billed ones (it bills that many, not those)."""
    ledger = await b.ledger()
    assert ledger.billed_calls == api.billed_lines
    assert ledger.cost_micros == api.billed_micros == api.billed_lines * LINE_PRICE
    if per_key:
        job = await b.store.job("job")
        rows = [r async for r in b.store.task_rows(job)]
        by_id = {r["id"]: r["key"] for r in rows}
        ours = Counter({r["key"]: 1 for r in rows if r["cost_micros"] > 0})
        ours.update(by_id[s["task_id"]] for s in await b.store.strays_of(job) if s["cost_micros"] > 0)
        assert ours == api.billed_by_key
    return ledger
