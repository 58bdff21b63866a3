"""The batch runner collecting what its batches made, on the in-memory batch API and a real SQLite store in virtual
time (batch_bench.py): every line settled as the API answered it, a batch that ends early collected for what it
finished, a restart carrying open shards on, and no more batches running at once than the provider allows.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from batcher.imageinfo import sniff
from batcher.models import Failure, TaskStatus
from batcher.providers.base import BatchLimits, BatchState
from batcher.providers.fake import BatchScript, CreateFault, Fate
from batcher.runner import StopReason
from batcher.runner.batch import BatchSettings
from batcher.store import Store
from tests.unit.batch_bench import CONFIG, EPOCH, assert_money_matches, bench, fake_api, virtual


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store with the schema in place: copied for each test, it saves each a migration."""
    path = tmp_path_factory.mktemp("template") / "batcher.db"

    async def create() -> None:
        await (await Store.open(str(path))).close()

    asyncio.run(create())
    return path


@pytest.fixture
def home(tmp_path: Path, migrated: Path) -> Path:
    shutil.copyfile(migrated, tmp_path / "batcher.db")
    return tmp_path


# --- collected -----------------------------------------------------------------------------------------------


@virtual
async def test_each_line_is_settled_as_the_api_answered_it_and_billed_as_the_api_billed_it(home: Path) -> None:
    async with bench(home, tasks=5) as b:
        api = fake_api()
        api.fate("prompt 1", Fate.REFUSED)
        api.fate("prompt 2", Fate.FAILED)  # an error line: sent again in a later shard, made then
        api.fate("prompt 3", Fate.MALFORMED)
        assert (await b.run(api, BatchSettings(max_requests=5))).reason == StopReason.DONE
        rows = await b.rows()
        for prompt in ("prompt 0", "prompt 2", "prompt 4"):
            r = rows[prompt]
            assert r["status"] == TaskStatus.SUCCEEDED and r["cost_micros"] == api.price_micros
            written = Path(r["output_path"])
            assert written.parent == b.out and sniff(written.read_bytes()) is not None
        assert (rows["prompt 1"]["status"], rows["prompt 1"]["failure"]) == (TaskStatus.FAILED, Failure.BLOCKED)
        assert (rows["prompt 3"]["status"], rows["prompt 3"]["failure"]) == (TaskStatus.FAILED, Failure.DOWNLOAD)
        assert rows["prompt 1"]["cost_micros"] == 0 and rows["prompt 3"]["cost_micros"] == api.price_micros
        assert len(api.batches) == 2  # the failed line rode again, alone
        ledger = await assert_money_matches(b, api)
        assert (ledger.blocked, ledger.paid_unusable) == (1, 1)
        assert ledger.gen_failures == 2  # the refusal, and the failed line's first try
        assert not api.files  # every requests and results file deleted once settled


@virtual
async def test_lines_counted_succeeded_but_missing_from_the_results_are_paid_result_lost_never_resent(
    home: Path,
) -> None:
    async with bench(home, tasks=4) as b:
        api = fake_api()
        api.fate("prompt 1", Fate.OMITTED)
        api.fate("prompt 2", Fate.OMITTED)
        assert (await b.run(api, BatchSettings(max_requests=4))).reason == StopReason.DONE
        rows = await b.rows()
        lost = {p for p, r in rows.items() if r["failure"] == Failure.RESULT_LOST}
        assert lost == {"prompt 1", "prompt 2"} and len(api.batches) == 1
        ledger = await assert_money_matches(b, api)
        assert ledger.result_lost == 2 and ledger.counts == {TaskStatus.SUCCEEDED: 2, TaskStatus.FAILED: 2}


@virtual
async def test_a_results_file_that_is_gone_leaves_its_billed_lines_paid_result_lost(home: Path) -> None:
    async with bench(home, tasks=3) as b:
        api = fake_api()
        api.fate("prompt 0", Fate.FAILED)  # not billed, not counted succeeded
        api.script_batches(BatchScript(results_gone=True))
        assert (await b.run(api)).reason == StopReason.DONE
        # the API counts two lines succeeded and no file says which: two tasks are paid result lost, the third
        # goes again counted as a possible double charge (the runner cannot know which lines were the billed ones)
        ledger = await assert_money_matches(b, api, per_key=False)
        assert ledger.result_lost == 2 and ledger.unknown_submissions == 1 and len(api.batches) == 2
        assert ledger.counts == {TaskStatus.FAILED: 2, TaskStatus.SUCCEEDED: 1}


@virtual
async def test_results_cut_mid_stream_are_downloaded_again_and_each_line_settled_once(home: Path) -> None:
    async with bench(home, tasks=4) as b:
        api = fake_api()
        api.script_batches(BatchScript(cuts=2))
        assert (await b.run(api, BatchSettings(max_requests=4))).reason == StopReason.DONE
        assert (await b.ledger()).calls.get("download") == 3  # cut twice, then read whole
        assert {r["status"] for r in (await b.rows()).values()} == {TaskStatus.SUCCEEDED}
        await assert_money_matches(b, api)


# --- a batch that ends early ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED])
@virtual
async def test_a_batch_that_ended_early_is_collected_for_what_it_finished_and_the_rest_ride_again(
    home: Path, ending: BatchState
) -> None:
    async with bench(home, tasks=5) as b:
        api = fake_api()
        api.script_batches(BatchScript(ending, finished=2, error="the batch failed" if ending is BatchState.FAILED
                                       else None))  # fmt: skip
        assert (await b.run(api, BatchSettings(max_requests=5))).reason == StopReason.DONE
        first, second = api.batches.values()
        assert (first.done, second.done) == (2, 3)  # the second holds exactly the lines the first did not finish
        assert {k for k, _ in second.keys}.isdisjoint(k for k, _ in first.keys[:2])
        assert {r["status"] for r in (await b.rows()).values()} == {TaskStatus.SUCCEEDED}
        assert [s.state for s in await b.shards()] == [ending.value.lower(), "collected"]
        await assert_money_matches(b, api)


@virtual
async def test_a_failed_batch_with_lines_missing_from_its_results_bills_that_many_and_resends_the_rest_counted(
    home: Path,
) -> None:
    async with bench(home, tasks=4) as b:
        api = fake_api()
        api.fate("prompt 0", Fate.OMITTED)
        api.script_batches(BatchScript(BatchState.FAILED, finished=2))
        assert (await b.run(api, BatchSettings(max_requests=4))).reason == StopReason.DONE
        # one billed line is missing: which of the three unread is unknowable, so one is paid result lost and
        # the other two go again, each counted as a possible double charge
        ledger = await assert_money_matches(b, api, per_key=False)
        assert ledger.result_lost == 1 and ledger.unknown_submissions == 2


@virtual
async def test_at_the_deadline_running_batches_are_cancelled_and_what_they_finished_is_collected(home: Path) -> None:
    async with bench(home, tasks=4) as b:
        api = fake_api(run_s=80.0)  # a line every 20 s
        settings = BatchSettings(max_requests=4, deadline_at=EPOCH + 50.0)
        assert (await b.run(api, settings)).reason == StopReason.DEADLINE
        (batch,) = api.batches.values()
        assert batch.script.ending is BatchState.CANCELLED and batch.done == 2
        rows = await b.rows()
        assert sorted(r["status"] for r in rows.values()) == [TaskStatus.PENDING] * 2 + [TaskStatus.SUCCEEDED] * 2
        await assert_money_matches(b, api)


# --- a restart carries open shards on ------------------------------------------------------------------------


@virtual
async def test_a_restart_collects_the_batches_an_earlier_run_created(home: Path) -> None:
    async with bench(home, tasks=4) as b:
        api = fake_api()
        assert (await b.run(api, BatchSettings(max_requests=2, wait=False))).reason == StopReason.SUBMITTED
        assert (await b.run(api, BatchSettings(max_requests=2), worker="w2")).reason == StopReason.DONE
        assert len(api.creates) == len(api.batches) == 2
        assert {r["status"] for r in (await b.rows()).values()} == {TaskStatus.SUCCEEDED}
        await assert_money_matches(b, api)


@virtual
async def test_a_restart_after_a_create_whose_reply_never_came_adopts_the_batch_and_creates_nothing(
    home: Path,
) -> None:
    async with bench(home, tasks=3) as b:
        api = fake_api(listing_lag_s=20.0)
        api.script_creates(CreateFault.UNKNOWN_CREATED)
        first = await b.runner(api)
        async with api:
            running = asyncio.create_task(first.run())
            while not api.creates:
                await asyncio.sleep(0.5)
            first.request_stop()  # the process stops with the shard in `creating`
            assert (await running).reason == StopReason.INTERRUPTED
        assert [s.state for s in await b.shards()] == ["creating"]
        later = await b.runner(api, config=CONFIG, worker="w2")
        async with api:
            await asyncio.sleep(CONFIG.lease_s)  # the first worker's leases run out
            assert (await later.run()).reason == StopReason.DONE
        assert len(api.creates) == len(api.batches) == 1
        assert {r["status"] for r in (await b.rows()).values()} == {TaskStatus.SUCCEEDED}
        await assert_money_matches(b, api)


# --- concurrent batches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 2, None])
@virtual
async def test_no_more_batches_run_at_once_than_the_provider_allows(home: Path, cap: int | None) -> None:
    async with bench(home, tasks=10) as b:
        api = fake_api(limits=BatchLimits(max_requests=100, max_bytes=10**7, max_concurrent=cap))
        assert (await b.run(api, BatchSettings(max_requests=2))).reason == StopReason.DONE
        assert api.over_limit == 0  # the API never had to refuse a create for it
        assert len(api.creates) == len(api.batches) == 5
        assert api.peak_running == (cap or 5)  # the limit is what held them back
        assert {r["status"] for r in (await b.rows()).values()} == {TaskStatus.SUCCEEDED}
        await assert_money_matches(b, api)
