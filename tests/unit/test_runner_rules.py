"""The runner's rules on an in-memory provider (`fake_provider`) and a real SQLite store, in virtual time.

The runner's wall clock is the loop's (`clock`): leases, backoffs, polls, a 429's wait and the unknown window
all pass in virtual time, so a test of a 30 s lease takes milliseconds, and its instants are the clock's, not
a loaded machine's. The store's thread takes no virtual time (`virtual_time.run_threaded`). Money is checked
against the fake's own accounting of what it accepted and billed, never the ledger against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import os
import random
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ParamSpec

import pytest
from sqlalchemy.engine import RowMapping

from batcher.config import RunConfig
from batcher.emulator.images import encode_png
from batcher.errors import AuthError, ExitCode, QuotaError
from batcher.models import CallRecord, JobSettings, OnUnknown, import_batches
from batcher.providers.base import FailureKind, Request, SubmitOutcome
from batcher.providers.fake import (
    KEY,
    PRICE,
    FakeProvider,
    Rates,
    accepted,
    auth_rejected,
    done,
    failed,
    quota_exhausted,
    rate_limited,
    transient,
    unknown,
)
from batcher.retry import RetryPolicy, backoff_s
from batcher.runner import Runner, RunResult, StopReason
from batcher.store import Job, Ledger, Store
from batcher.store.tables import tasks
from tests import virtual_time
from tests.integration.runner_kit import MODEL, specs

EPOCH = 1_800_000_000.0  # the runner's wall clock at virtual time 0
P0, P1, P2, P3 = (f"prompt {i}" for i in range(4))  # the prompts of `specs`
RETRY = RetryPolicy(base_s=1.0, cap_s=8.0)
CONFIG = RunConfig(retry=RETRY)  # the real lease (30 s), heartbeat (10 s) and polling: time costs nothing here
LIMIT_S = 900.0  # virtual seconds a run may take before the test fails instead of hanging

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


@dataclass
class Bench:
    """One job in a SQLite store in tmp_path; `open()` another store on the same file (another process)."""

    tmp: Path
    stores: list[Store] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.stores[0]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    async def open(self) -> Store:
        store = await Store.open(str(self.tmp / "batcher.db"))
        self.stores.append(store)
        return store

    async def job(self) -> Job:
        return await self.store.job("job")

    async def runner(
        self, fake: FakeProvider, config: RunConfig = CONFIG, *, worker: str = "w1", store: Store | None = None
    ) -> Runner:
        store = store or self.store
        return Runner(store, fake, await store.job("job"), config, {MODEL: PRICE}, worker_id=worker,
                      rng=random.Random(0), clock=clock)  # fmt: skip

    async def run(
        self, fake: FakeProvider, config: RunConfig = CONFIG, *, limit_s: float = LIMIT_S, **kw: Any
    ) -> RunResult:
        return await drive(await self.runner(fake, config, **kw), fake, limit_s)

    async def rows(self) -> dict[str, RowMapping]:
        return {r["prompt"]: r async for r in self.store.task_rows(await self.job())}

    async def ledger(self) -> Ledger:
        return await self.store.ledger(await self.job())


async def drive(runner: Runner, fake: FakeProvider, limit_s: float = LIMIT_S) -> RunResult:
    async with fake:
        return await asyncio.wait_for(runner.run(), limit_s)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store with the schema in place: copied for each test, it saves each a migration (half a second)."""
    path = tmp_path_factory.mktemp("template") / "batcher.db"

    async def create() -> None:
        await (await Store.open(str(path))).close()

    asyncio.run(create())
    return path


@pytest.fixture
def home(tmp_path: Path, migrated: Path) -> Path:
    """A folder for one test's store (migrated already) and outputs."""
    shutil.copyfile(migrated, tmp_path / "batcher.db")
    return tmp_path


@contextlib.asynccontextmanager
async def bench(home: Path, tasks: int = 1) -> AsyncIterator[Bench]:
    """The job of `tasks` prompts (`P0`...) imported into the store in `home`."""
    b = Bench(home)
    store = await b.open()
    settings = JobSettings("job", str(b.out))
    await store.import_manifest(settings, "test", import_batches(specs(tasks)), extra={}, now=EPOCH)
    try:
        yield b
    finally:
        for s in b.stores:
            await s.close()


def fake_provider(name: str = "fake", **knobs: Any) -> FakeProvider:
    return FakeProvider(name, clock=clock, **knobs)


async def assert_money_matches(b: Bench, *fakes: FakeProvider) -> Ledger:
    """The ledger bills what the API billed, and every submission the API accepted is in the store (a task's,
    a stray's, or a call's that checked it to its end): nothing the API holds was dropped."""
    ledger = await b.ledger()
    assert ledger.billed_calls == sum(len(f.billed) for f in fakes)
    assert ledger.cost_micros == sum(f.billed_micros for f in fakes)
    job = await b.job()
    known = {r["remote_task_id"] for r in (await b.rows()).values()}
    known |= {s["remote_task_id"] for s in await b.store.strays_of(job)}
    known |= {c["remote_task_id"] for c in await b.store.calls(job) if c["kind"] == "query"}
    assert {h for f in fakes for h in f.accepted} <= known
    return ledger


async def hang(_: Request) -> SubmitOutcome:
    """A submit on the wire whose reply never comes."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


def late(
    after_s: float, reply: Callable[[], SubmitOutcome] = accepted
) -> Callable[[Request], Awaitable[SubmitOutcome]]:
    """A submit the API takes, whose reply (`accepted`, or `done`: the image itself) takes `after_s` to come."""

    async def answer(_: Request) -> SubmitOutcome:
        await asyncio.sleep(after_s)
        return reply()

    return answer


# --- leases -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [accepted, done], ids=["accepted", "image-in-reply"])
@virtual
async def test_a_task_whose_lease_ran_out_is_taken_over_and_the_old_holders_late_reply_becomes_a_stray(
    home: Path, reply: Callable[[], SubmitOutcome]
) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[late(60.0, reply)])  # worker a's: its reply comes long after its lease ran out
        silent = replace(CONFIG, heartbeat_s=10_000.0)  # a hangs: its lease is never renewed
        run_a = asyncio.create_task(b.run(fake, silent, worker="a"))
        await asyncio.sleep(CONFIG.lease_s + 5.0)
        result_b = await b.run(fake, worker="b", store=await b.open())
        result_a = await run_a

        assert result_b.reason == StopReason.DONE and result_a.reason == StopReason.DONE
        assert fake.submits(P0) == 2  # b created it again: a's submit might never have reached the API
        rows = await b.rows()
        assert rows[P0]["status"] == "succeeded" and rows[P0]["claimed_by"] is None
        (stray,) = await b.store.strays_of(await b.job())
        assert stray["status"] == "succeeded" and ".dup-" in stray["output_path"]
        assert Path(stray["output_path"]).is_file() and Path(rows[P0]["output_path"]).is_file()
        ledger = await assert_money_matches(b, fake)
        assert ledger.known_duplicates == 1 and ledger.billed_calls == 2
        assert ledger.unknown_submissions == 1 and ledger.held_micros == 0


@virtual
async def test_a_late_accept_for_a_taken_over_task_not_yet_sent_again_is_adopted_and_not_sent_twice(
    home: Path,
) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[late(CONFIG.lease_s + 10.0)])
        silent = replace(CONFIG, heartbeat_s=10_000.0)
        run_a = asyncio.create_task(b.run(fake, silent, worker="a"))
        await asyncio.sleep(CONFIG.lease_s + 5.0)
        # b takes the task over, but its create waits in the rate gate past a's late reply
        fake.gate.rate_limited(10.0)
        result_b = await b.run(fake, worker="b", store=await b.open())
        result_a = await run_a

        assert result_b.reason == StopReason.DONE and result_a.reason == StopReason.DONE
        assert fake.submits(P0) == 1 and len(fake.accepted) == 1
        rows = await b.rows()
        assert rows[P0]["status"] == "succeeded" and rows[P0]["remote_task_id"] in fake.accepted
        assert await b.store.strays_of(await b.job()) == []
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 1
        assert ledger.unknown_submissions == 0  # the adopted reply proves what the unknown create did


@virtual
async def test_a_live_workers_heartbeat_renews_its_lease_so_its_slow_submit_is_not_taken_over(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[late(1.5 * CONFIG.lease_s)])  # slow, but its worker is alive and beating
        run_a = asyncio.create_task(b.run(fake, worker="a"))
        await asyncio.sleep(CONFIG.lease_s + 5.0)
        result_b = await b.run(fake, worker="b", store=await b.open())
        assert (await run_a).reason == result_b.reason == StopReason.DONE
        assert fake.submits(P0) == 1
        assert await b.store.strays_of(await b.job()) == []
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 1 and ledger.unknown_submissions == 0


# --- the budget ---------------------------------------------------------------------------------------------


@virtual
async def test_the_budget_bounds_the_submits_sent_and_the_run_stops_with_budget(home: Path) -> None:
    async with bench(home, 10) as b:
        fake = fake_provider()
        result = await b.run(fake, replace(CONFIG, budget_micros=3 * PRICE + 1))
        assert result.reason == StopReason.BUDGET
        assert fake.submits() == 3
        ledger = await assert_money_matches(b, fake)
        assert ledger.counts == {"succeeded": 3, "pending": 7} and ledger.held_micros == 0


@virtual
async def test_a_refused_submit_releases_its_reservation_so_the_next_task_may_go(home: Path) -> None:
    async with bench(home, 4) as b:
        fake = fake_provider()
        fake.script(P0, submit=[failed(FailureKind.INVALID, "size 7x7 is not offered")])
        result = await b.run(fake, replace(CONFIG, budget_micros=2 * PRICE))
        assert result.reason == StopReason.BUDGET
        assert fake.submits() == 3  # P0 (refused: not billed), then two that fit the budget
        rows = await b.rows()
        assert rows[P0]["status"] == "failed" and rows[P0]["failure"] == "refused"
        ledger = await assert_money_matches(b, fake)
        assert ledger.counts == {"failed": 1, "succeeded": 2, "pending": 1} and ledger.held_micros == 0


# --- retries ------------------------------------------------------------------------------------------------


@virtual
async def test_transient_submits_back_off_then_fail_with_transient_after_max_attempts(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[transient()] * 3)
        retry = replace(RETRY, max_attempts=3)
        result = await b.run(fake, replace(CONFIG, retry=retry))
        assert result.reason == StopReason.DONE
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["failure"] == "transient" and row["attempts"] == 3
        assert fake.submits() == 3
        # the backoffs are the seeded draws, waited in virtual time (the next claim comes as the task is due)
        rng = random.Random(0)
        waits = [backoff_s(n, retry, rng.random()) for n in (1, 2)]
        sent = [s.at for s in fake.sent]
        for (before, after), wait in zip(itertools.pairwise(sent), waits, strict=True):
            assert wait <= after - before < wait + 0.1
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 0 and ledger.held_micros == 0


@virtual
async def test_a_rate_limited_submit_waits_its_wait_s_and_costs_no_attempt(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[rate_limited(5.0)])
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        first, second = (s.at for s in fake.sent)
        assert second - first >= 5.0
        row = (await b.rows())[P0]
        assert row["status"] == "succeeded" and row["attempts"] == 1
        ledger = await assert_money_matches(b, fake)
        assert ledger.rate_limited == 1 and ledger.billed_calls == 1


@virtual
async def test_failed_generations_are_retried_max_generation_failures_times_then_fail_unbilled(
    home: Path,
) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, check=[failed(FailureKind.GENERATION, "generation failed")] * 3)
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        assert fake.submits() == 1 + RETRY.max_generation_failures
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["failure"] == "generation" and row["gen_failures"] == 3
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 0 and ledger.cost_micros == 0 and ledger.held_micros == 0


@virtual
async def test_a_blocked_prompt_fails_for_good_unbilled_and_is_not_retried_by_default(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[failed(FailureKind.BLOCKED, "IMAGE_SAFETY")])
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        assert fake.submits() == 1
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["failure"] == "blocked"
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 0 and ledger.held_micros == 0


@virtual
async def test_a_blocked_prompt_is_retried_max_blocked_retries_times_when_set(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[failed(FailureKind.BLOCKED, "IMAGE_SAFETY")] * 3)
        result = await b.run(fake, replace(CONFIG, retry=replace(RETRY, max_blocked_retries=2)))
        assert result.reason == StopReason.DONE
        assert fake.submits() == 3
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["failure"] == "blocked"
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 0 and ledger.held_micros == 0


# --- the unknown window -------------------------------------------------------------------------------------


@virtual
async def test_an_unknown_submit_makes_the_task_unknown_and_resubmit_sends_it_again_counted(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[unknown()])
        config = replace(CONFIG, retry=replace(RETRY, base_s=30.0, cap_s=30.0))  # a long look at the state
        run = asyncio.create_task(b.run(fake, config))
        await asyncio.sleep(10.0)
        row = (await b.rows())[P0]
        assert row["status"] == "unknown" and row["unknown_count"] == 1 and row["claimed_by"] is None
        assert (await run).reason == StopReason.DONE
        assert fake.submits() == 2
        assert (await b.rows())[P0]["status"] == "succeeded"
        ledger = await assert_money_matches(b, fake)
        assert ledger.unknown_submissions == 1
        assert ledger.held_micros == PRICE  # the unknown create may have been billed: its reservation stays


@virtual
async def test_with_on_unknown_skip_an_unknown_submit_fails_without_a_second_submit(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[unknown()])
        result = await b.run(fake, replace(CONFIG, on_unknown=OnUnknown.SKIP))
        assert result.reason == StopReason.DONE
        assert fake.submits() == 1
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["failure"] == "unknown"
        ledger = await assert_money_matches(b, fake)
        assert ledger.unknown_submissions == 1


@virtual
async def test_a_run_killed_after_before_send_leaves_the_task_submitting_and_recovery_makes_it_unknown(
    home: Path,
) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[hang])
        run = asyncio.create_task(b.run(fake))
        while not fake.sent:  # the intent is committed and the request has left
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        row = (await b.rows())[P0]
        assert row["status"] == "submitting" and row["attempts"] == 1
        assert await b.store.recover((await b.job()).id, clock()) == 1
        row = (await b.rows())[P0]
        assert row["status"] == "unknown" and row["unknown_count"] == 1
        # a later run that will not risk paying twice fails it without sending it again
        result = await b.run(fake, replace(CONFIG, on_unknown=OnUnknown.SKIP), worker="w2")
        assert result.reason == StopReason.DONE
        assert fake.submits() == 1
        assert (await b.rows())[P0]["failure"] == "unknown"


# --- an image in the submit's reply (the Gemini online shape) ----------------------------------------------


@virtual
async def test_an_image_in_the_submit_reply_is_saved_and_billed_once_without_a_check(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[done()])
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        assert fake.submits() == 1 and not fake.checks and fake.fetches == 0
        row = (await b.rows())[P0]
        data = Path(row["output_path"]).read_bytes()
        assert row["status"] == "succeeded" and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 1 and ledger.calls == {"create": 1} and ledger.held_micros == 0


@virtual
async def test_reply_bytes_that_are_not_an_image_fail_the_task_with_download_and_stay_billed(
    home: Path,
) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        fake.script(P0, submit=[done(b"<html>not an image</html>")])
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["failure"] == "download"
        assert not b.out.exists() or not any(b.out.iterdir())  # no file, no half-written part
        ledger = await assert_money_matches(b, fake)
        assert ledger.billed_calls == 1 and ledger.paid_unusable == 1 and ledger.held_micros == 0


# --- fatal answers ------------------------------------------------------------------------------------------


@virtual
async def test_a_spent_quota_stops_the_run_fatal_with_exit_code_4_and_the_task_waits_for_the_reset(
    home: Path,
) -> None:
    async with bench(home, 3) as b:
        fake = fake_provider()
        until = EPOCH + 86_400.0
        fake.script(P0, submit=[quota_exhausted(until)])
        result = await b.run(fake)
        assert result.reason == StopReason.FATAL and isinstance(result.error, QuotaError)
        assert (
            result.error.exit_code is ExitCode.QUOTA
            and int(result.error.exit_code) == 4
            and result.error.until == until
        )
        rows = await b.rows()
        assert rows[P0]["status"] == "pending" and rows[P0]["next_attempt_at"] == until
        assert rows[P0]["attempts"] == 0
        # nothing lost: every other task is where a resume takes it up
        assert all(r["status"] in ("pending", "submitted") for r in rows.values())
        ledger = await assert_money_matches(b, fake)
        assert ledger.held_micros == PRICE * sum(r["status"] == "submitted" for r in rows.values())


@virtual
async def test_a_rejected_key_stops_the_run_and_names_the_key_variable_never_the_key(home: Path) -> None:
    async with bench(home, 3) as b:
        fake = fake_provider()
        fake.script(P0, submit=[auth_rejected("HTTP 401: API key not valid")])
        result = await b.run(fake)
        assert result.reason == StopReason.FATAL and isinstance(result.error, AuthError)
        assert fake.key_env in result.error.message and KEY not in result.error.message
        rows = await b.rows()
        assert rows[P0]["status"] == "pending" and rows[P0]["attempts"] == 0
        assert all(KEY not in (r["last_error"] or "") for r in rows.values())
        assert all(KEY not in (c["detail"] or "") for c in await b.store.calls(await b.job()))
        await assert_money_matches(b, fake)


# --- a switch of provider -----------------------------------------------------------------------------------


@virtual
async def test_tasks_sent_through_one_provider_are_left_to_it_by_a_run_through_another(home: Path) -> None:
    async with bench(home, 4) as b:
        a = fake_provider("a", generation_s=100_000.0)  # P0: submitted, still running when a stops
        a.script(P1, submit=[hang])  # P1: on the wire when a stops: unknown after recovery
        a.script(P2, submit=[rate_limited(20.0)])  # P2: pending; P3 waits in a's gate and is let go
        runner_a = await b.runner(a, worker="a")
        asyncio.get_running_loop().call_later(5.0, runner_a.request_stop)
        assert (await drive(runner_a, a)).reason == StopReason.INTERRUPTED

        rows = await b.rows()
        assert [rows[p]["status"] for p in (P0, P1, P2, P3)] == ["submitted", "submitting", "pending", "pending"]
        held = {p: rows[p]["remote_task_id"] for p in (P0, P1)}

        fake_b = fake_provider("b")
        result = await b.run(fake_b, worker="b", store=await b.open())
        assert result.reason == StopReason.DONE and result.left == 2
        assert sorted(s.prompt for s in fake_b.sent) == [P2, P3]
        rows = await b.rows()
        assert rows[P0]["status"] == "submitted" and rows[P0]["provider"] == "a"
        assert rows[P1]["status"] == "unknown" and rows[P1]["provider"] == "a"
        assert {p: rows[p]["remote_task_id"] for p in (P0, P1)} == held
        assert rows[P2]["status"] == rows[P3]["status"] == "succeeded"
        await assert_money_matches(b, a, fake_b)


# --- a provider's own bug -------------------------------------------------------------------------------------


async def broken(_: Request) -> SubmitOutcome:
    """A provider's own bug after the request left (a reply it cannot parse, say): not an outcome."""
    raise KeyError("candidates")


@virtual
async def test_a_provider_error_after_before_send_stops_the_run_and_leaves_the_task_to_recovery(home: Path) -> None:
    async with bench(home, 2) as b:
        fake = fake_provider()
        fake.script(P0, submit=[broken])
        result = await b.run(fake, limit_s=60.0)
        assert result.reason == StopReason.FATAL and result.error is not None
        row = (await b.rows())[P0]
        assert row["status"] in ("submitting", "unknown") and row["claimed_by"] is None


# --- an image renamed into place by a run killed before it could record it -----------------------------------


async def paid_and_cut(b: Bench, fake: FakeProvider, handle: str) -> None:
    """What a run killed between renaming P0's image into place and committing it leaves: the task submitted
    and billed (its Success was seen), the API still knowing the generation."""
    job = await b.job()
    (task,) = await b.store.claim(job, "w0", 1, EPOCH, EPOCH + 30)
    await b.store.begin_create(task, EPOCH, price_micros=PRICE, provider=fake.name)
    await b.store.created(task, handle, None, CallRecord("create", "ok", 200, 1.0, EPOCH), EPOCH, provider=fake.name)
    b.store.billed(task, PRICE, PRICE, EPOCH)
    await b.store.release(task, EPOCH)
    fake.accepted[handle] = P0
    fake.billed[handle] = PRICE
    fake._started[handle] = EPOCH - 3600.0


@virtual
async def test_an_image_left_in_place_by_a_killed_run_is_taken_without_fetching_it_again(home: Path) -> None:
    async with bench(home) as b:
        fake = fake_provider()
        await paid_and_cut(b, fake, "fake-cut")
        left = encode_png("what the killed run saved", 16, 16)
        b.out.mkdir(parents=True)
        (b.out / "prompt-0.png").write_bytes(left)
        os.utime(b.out / "prompt-0.png", (EPOCH, EPOCH))  # written when the killed run saw the Success
        fake.script(P0, check=[done(b"not an image: the host serves an error page now")])
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        row = (await b.rows())[P0]
        assert row["status"] == "succeeded" and row["sha256"] == hashlib.sha256(left).hexdigest()
        assert fake.fetches == 0 and fake.submits() == 0
        await assert_money_matches(b, fake)


@virtual
async def test_an_image_older_than_the_submission_is_not_taken_and_never_left_beside_a_failure(home: Path) -> None:
    # an earlier job's image under the same name (an output directory used again): not this task's, so it is not
    # adopted; the fetch again serves an error page, and the task fails with nothing left under its name
    async with bench(home) as b:
        fake = fake_provider()
        await paid_and_cut(b, fake, "fake-cut")
        b.out.mkdir(parents=True)
        (b.out / "prompt-0.png").write_bytes(encode_png("an earlier job's image", 16, 16))
        os.utime(b.out / "prompt-0.png", (EPOCH - 3600.0, EPOCH - 3600.0))
        fake.script(P0, check=[done(b"not an image: the host serves an error page now")])
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        row = (await b.rows())[P0]
        assert row["status"] == "failed" and row["output_path"] is None
        assert fake.fetches == 1 and list(b.out.iterdir()) == []
        await assert_money_matches(b, fake)


@virtual
async def test_a_file_another_task_records_as_its_own_is_never_taken(home: Path) -> None:
    async with bench(home, 2) as b:
        fake = fake_provider()
        await paid_and_cut(b, fake, "fake-cut")
        theirs = encode_png("another task's image", 16, 16)
        b.out.mkdir(parents=True)
        (b.out / "prompt-0.png").write_bytes(theirs)
        async with b.store.engine.begin() as conn:  # P1 records that file as its output (a renamed task, say)
            await conn.execute(
                tasks.update().where(tasks.c.prompt == P1).values(output_path=str(b.out / "prompt-0.png"))
            )
        result = await b.run(fake)
        assert result.reason == StopReason.DONE
        row = (await b.rows())[P0]
        assert row["status"] == "succeeded" and row["sha256"] != hashlib.sha256(theirs).hexdigest()
        assert fake.fetches >= 1


@pytest.mark.parametrize("image_in_reply", [False, True], ids=["queued", "image-in-reply"])
@virtual
async def test_drawn_failures_refusals_429s_and_503s_all_settle_and_the_ledger_bills_what_the_api_billed(
    home: Path, image_in_reply: bool
) -> None:
    async with bench(home, 4) as b:
        rates = Rates(failed=0.2, refused=0.1, rate_limited=0.2, transient=0.2)
        fake = fake_provider(rates=rates, rng=random.Random(7), image_in_reply=image_in_reply)
        assert (await b.run(fake)).reason == StopReason.DONE
        assert {r["status"] for r in (await b.rows()).values()} <= {"succeeded", "failed"}
        assert 0 < len(fake.billed) < fake.submits()  # outcomes were drawn, and some made images
        await assert_money_matches(b, fake)
