"""Batch Mode on PostgreSQL: a worker frozen past its lease (SIGSTOP, then SIGCONT) while another takes its
shards over changes nothing of them; every batch is created once and collected, billed once per key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.emulator import Latency
from tests.acceptance.test_batch_money_truth import a_worker_frozen_past_its_lease
from tests.conftest import StartGemini

pytestmark = pytest.mark.postgres


async def test_a_worker_frozen_past_its_lease_on_postgresql(
    pg_url: str, start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(batch_latency=Latency("fixed", 3.0), batch_create_delay_s=4.0)
    head = await a_worker_frozen_past_its_lease(pg_url, emu, tmp_path)
    assert head["known_duplicates"] == 0 and head["paid_result_lost"] == 0
