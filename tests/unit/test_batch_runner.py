"""The batch runner's rules, on the in-memory batch API and a real SQLite store in virtual time (batch_bench.py):
shards planned within limits, each created exactly once, an unknown create reconciled by listing, and shards that
end without a batch (abandoned). Collecting, endings, restarts and the concurrency limit: test_batch_collect.py.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from batcher.models import Failure, TaskStatus
from batcher.providers.base import BatchLimits
from batcher.providers.fake import CreateFault
from batcher.runner import StopReason
from batcher.runner.batch import BatchSettings
from batcher.runner.batch.shard import GRACE_LISTINGS, MAX_REUPLOADS
from batcher.store import Store
from tests.unit.batch_bench import SMALL, assert_money_matches, bench, fake_api, virtual


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


# --- planned ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "limits", "lines"),
    [
        (BatchSettings(max_requests=3), BatchLimits(max_requests=100, max_bytes=10**7), 3),  # the manifest's
        (BatchSettings(max_requests=50), BatchLimits(max_requests=2, max_bytes=10**7), 2),  # the provider's
        (BatchSettings(), BatchLimits(max_requests=4, max_bytes=10**7), 4),  # none set: the provider's
    ],
    ids=["manifest", "provider", "default-within-provider"],
)
@virtual
async def test_shards_hold_at_most_the_requests_the_manifest_and_the_provider_allow(
    home: Path, settings: BatchSettings, limits: BatchLimits, lines: int
) -> None:
    async with bench(home, tasks=7) as b:
        api = fake_api(limits=limits)
        assert (await b.run(api, settings)).reason == StopReason.DONE
        assert sorted(len(x.keys) for x in api.batches.values()) == sorted(
            [lines] * (7 // lines) + [7 % lines] * (7 % lines > 0)
        )
        assert [s.requests for s in await b.shards()] == [len(x.keys) for x in api.batches.values()]
        assert all(r["status"] == TaskStatus.SUCCEEDED for r in (await b.rows()).values())
        await assert_money_matches(b, api)


@pytest.mark.parametrize("where", ["manifest", "provider"])
@virtual
async def test_shards_hold_at_most_the_bytes_the_manifest_and_the_provider_allow(home: Path, where: str) -> None:
    cap = 700  # bytes: two or three of these small request lines, not seven
    async with bench(home, tasks=7) as b:
        limits = BatchLimits(max_requests=100, max_bytes=cap if where == "provider" else 10**7)
        api = fake_api(limits=limits)
        settings = BatchSettings(max_bytes=cap if where == "manifest" else None)
        assert (await b.run(api, settings)).reason == StopReason.DONE
        sizes = [api.uploaded[x.input_file] for x in api.batches.values()]
        assert len(sizes) >= 3 and max(sizes) <= cap and sum(len(x.keys) for x in api.batches.values()) == 7
        await assert_money_matches(b, api)


@virtual
async def test_a_request_the_provider_cannot_take_fails_before_sending_and_the_rest_ride(home: Path) -> None:
    async with bench(home, tasks=3) as b:
        api = fake_api()
        api.invalid_prompts.add("prompt 1")
        assert (await b.run(api)).reason == StopReason.DONE
        rows = await b.rows()
        assert rows["prompt 1"]["status"] == TaskStatus.FAILED and rows["prompt 1"]["failure"] == Failure.REFUSED
        assert [len(x.keys) for x in api.batches.values()] == [2]
        await assert_money_matches(b, api)


# --- created exactly once -----------------------------------------------------------------------------------


@virtual
async def test_every_shard_is_created_once_and_every_line_billed_once(home: Path) -> None:
    async with bench(home, tasks=8) as b:
        api = fake_api()
        assert (await b.run(api)).reason == StopReason.DONE
        shards = await b.shards()
        assert len(api.creates) == len(api.batches) == len(shards) == 3
        assert sorted(x.display_name for x in api.batches.values()) == sorted(s.display_name for s in shards)
        assert {s.remote_name for s in shards} == set(api.batches)
        assert {s.provider for s in shards} == {api.name}  # recorded as the provider that made them
        assert {r["provider"] for r in (await b.rows()).values()} == {api.name}
        assert set(api.billed_by_key.values()) == {1} and api.billed_lines == 8
        await assert_money_matches(b, api)


@virtual
async def test_a_create_refused_for_the_rate_is_sent_again_and_makes_one_batch(home: Path) -> None:
    async with bench(home, tasks=2) as b:
        api = fake_api()
        api.script_creates(CreateFault.RATE_LIMITED, CreateFault.NOT_SENT)
        assert (await b.run(api)).reason == StopReason.DONE
        assert len(api.creates) == 3 and len(api.batches) == 1
        # each reply proved nothing was made: sent again after its wait, with no listing and no grace period
        assert not api.listings and api.creates[-1] - api.creates[0] < SMALL.create_grace_s
        await assert_money_matches(b, api)


# --- an unknown create, reconciled by listing ----------------------------------------------------------------


@virtual
async def test_an_unknown_create_that_made_its_batch_is_found_on_the_listing_and_adopted(home: Path) -> None:
    async with bench(home, tasks=3) as b:
        api = fake_api(listing_lag_s=SMALL.create_grace_s / 2)  # missing at first, within the grace period
        api.script_creates(CreateFault.UNKNOWN_CREATED)
        assert (await b.run(api)).reason == StopReason.DONE
        assert len(api.creates) == 1 and len(api.batches) == 1
        assert len(api.listings) >= 2 and all(whole for _, whole in api.listings)  # absent at first, then found
        (shard,) = await b.shards()
        assert shard.remote_name == next(iter(api.batches))
        ledger = await assert_money_matches(b, api)
        assert ledger.counts == {TaskStatus.SUCCEEDED: 3} and ledger.known_duplicates == 0


@virtual
async def test_an_unknown_create_absent_from_complete_listings_past_the_grace_period_is_created_again(
    home: Path,
) -> None:
    async with bench(home, tasks=3) as b:
        api = fake_api()
        api.script_creates(CreateFault.UNKNOWN_NOT_CREATED)
        assert (await b.run(api)).reason == StopReason.DONE
        first, second = api.creates
        assert second - first >= SMALL.create_grace_s  # never sooner: a listing may lag that long
        before = [at for at, whole in api.listings if at <= second]
        assert len(before) >= GRACE_LISTINGS and all(whole for at, whole in api.listings)
        assert len(api.batches) == 1
        ledger = await assert_money_matches(b, api)
        assert ledger.counts == {TaskStatus.SUCCEEDED: 3}
        assert ledger.calls.get("batch_create") == 2  # both creates are in the ledger


@virtual
async def test_a_listing_that_lost_a_page_proves_nothing_and_nothing_is_created_on_it(home: Path) -> None:
    async with bench(home, tasks=2) as b:
        api = fake_api()
        api.script_creates(CreateFault.UNKNOWN_NOT_CREATED)
        api.failing_listings = 6  # past the grace period, and every one incomplete
        assert (await b.run(api)).reason == StopReason.DONE
        first, second = api.creates
        failed = [at for at, whole in api.listings if not whole]
        whole_before = [at for at, whole in api.listings if whole and at <= second]
        assert len(failed) == 6 and first < min(failed) and max(failed) < second  # the create waited them out
        assert len(whole_before) >= GRACE_LISTINGS
        await assert_money_matches(b, api)


@virtual
async def test_a_batch_the_listing_shows_only_past_the_grace_period_is_a_known_duplicate_billed_twice(
    home: Path,
) -> None:
    async with bench(home, tasks=2) as b:
        # on the listing only after the grace period, yet before its shard's second batch ends
        api = fake_api(listing_lag_s=SMALL.create_grace_s + 20.0, run_s=60.0)
        api.script_creates(CreateFault.UNKNOWN_CREATED)
        assert (await b.run(api)).reason == StopReason.DONE
        assert len(api.creates) == len(api.batches) == 2  # the listing lagged past the grace: created again
        assert set(api.billed_by_key.values()) == {2}  # the API billed both batches
        ledger = await assert_money_matches(b, api)  # and the ledger says so: each task once plus a duplicate
        assert ledger.known_duplicates == 2 and ledger.counts == {TaskStatus.SUCCEEDED: 2}


# --- abandoned: never created, or refused --------------------------------------------------------------------


@virtual
async def test_a_requests_file_the_api_dropped_before_the_create_is_uploaded_again(home: Path) -> None:
    async with bench(home, tasks=2) as b:
        api = fake_api()
        api.script_creates(CreateFault.INPUT_MISSING)
        assert (await b.run(api)).reason == StopReason.DONE
        assert len(api.uploaded) == 2 and len(api.creates) == 2 and len(api.batches) == 1
        await assert_money_matches(b, api)


@virtual
async def test_a_requests_file_dropped_too_often_fails_its_tasks_unbilled(home: Path) -> None:
    async with bench(home, tasks=2) as b:
        api = fake_api()
        api.script_creates(*[CreateFault.INPUT_MISSING] * (MAX_REUPLOADS + 1))
        assert (await b.run(api)).reason == StopReason.DONE
        assert len(api.creates) == MAX_REUPLOADS + 1 and not api.batches
        rows = await b.rows()
        assert {r["status"] for r in rows.values()} == {TaskStatus.FAILED}
        (shard,) = await b.shards()
        assert shard.state == "failed"
        ledger = await assert_money_matches(b, api)
        assert ledger.cost_micros == 0 and ledger.held_micros == 0  # nothing billed, nothing still reserved


@virtual
async def test_a_refused_create_fails_its_tasks_unbilled_and_releases_their_reservation(home: Path) -> None:
    async with bench(home, tasks=3) as b:
        api = fake_api()
        api.script_creates(CreateFault.REFUSED)
        assert (await b.run(api)).reason == StopReason.DONE
        assert len(api.creates) == 1 and not api.batches
        rows = await b.rows()
        assert {(r["status"], r["failure"]) for r in rows.values()} == {(TaskStatus.FAILED, Failure.REFUSED)}
        ledger = await assert_money_matches(b, api)
        assert ledger.cost_micros == 0 and ledger.held_micros == 0
        assert [s.state for s in await b.shards()] == ["failed"]
        assert not api.files  # its uploaded requests file was deleted


@virtual
async def test_without_the_wait_the_run_ends_once_every_shard_is_created(home: Path) -> None:
    async with bench(home, tasks=4) as b:
        api = fake_api()
        result = await b.run(api, BatchSettings(max_requests=2, wait=False))
        assert result.reason == StopReason.SUBMITTED
        assert len(api.creates) == 2 and all(x.ended_at is None for x in api.batches.values())
        assert {r["status"] for r in (await b.rows()).values()} == {TaskStatus.SUBMITTED}
        assert SMALL.wait  # the other tests wait
