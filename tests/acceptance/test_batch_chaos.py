"""The batch route's chaos run of bench/chaos.py at CI size: two `batcher work` processes on one store, killed
with SIGKILL twice and crossed by `batcher cancel` at fixed-seed random moments, against a Gemini emulator in a process
of its own playing Google's faults around a long batch at rates high enough to meet each in tens of tasks; then
money is checked per key, per batch and in total against the emulator's own billing, and every file byte for
byte against the image it billed (batch_chaos_checks.py lists the checks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.acceptance.batch_chaos_kit import DEFAULT_BATCH_FAULTS, BatchPlan, FreshDatabase, run_batch_chaos

pytestmark = pytest.mark.slow

# Each fault at a rate that meets it now and then in 6 batches of 5 (the full run uses DEFAULT_BATCH_FAULTS).
CI_FAULTS = {
    **DEFAULT_BATCH_FAULTS,
    "batch_create_gateway_rate": "0.15",
    "batch_create_503_rate": "0.05",
    "batch_create_lost_rate": "0.05",
    "batch_fail_rate": "0.1",
    "batch_ended_no_file_rate": "0.3",
    "batch_omit_line_rate": "0.05",
    "results_gone_rate": "0.1",
    "batch_line_fail_rate": "0.02",
}


def ci_plan(pg_url: str | None = None) -> BatchPlan:
    """30 tasks, about a minute. Seed 3 meets a create answered by a gateway after the batch was made and
    batches that fail midway, some with no responses file (their billed lines named by no file)."""
    return BatchPlan(tasks=30, workers=2, kills=2, cancels=1, seed=3, shard=5, batch_latency=(0.5, 2.0),
                     file_ttl_s=60.0, faults=CI_FAULTS, horizon_s=12.0, pg_url=pg_url, run_timeout_s=90.0)  # fmt: skip


def test_batch_workers_killed_and_cancelled_lose_nothing_and_pay_nothing_unflagged(tmp_path: Path) -> None:
    figures = run_batch_chaos(ci_plan(), tmp_path)
    assert not figures.problems, figures.table()
    assert figures.kills == 2 and figures.cancels == 1, figures.table()
    assert figures.files_verified == figures.succeeded > 0, figures.table()


@pytest.mark.postgres
def test_the_same_on_postgresql(tmp_path: Path) -> None:
    admin = os.environ.get("BATCHER_TEST_PG_URL")
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("BATCHER_TEST_PG_URL is not set: .ci/run must start PostgreSQL and export it")
        pytest.skip("no PostgreSQL server configured (set BATCHER_TEST_PG_URL)")
    with FreshDatabase(admin) as database:
        figures = run_batch_chaos(ci_plan(database.url), tmp_path)
    assert not figures.problems, figures.table()
    assert figures.kills == 2 and figures.cancels == 1, figures.table()
    assert figures.files_verified == figures.succeeded > 0, figures.table()
