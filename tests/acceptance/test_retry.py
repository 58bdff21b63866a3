"""`batcher retry` over the real CLI: failed tasks back to work by cause, the cost shown first, paid-for images
fetched again rather than created again, and a run with failures naming the command."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, manifest
from tests.conftest import StartEmulator

FAST = Latency("uniform", 0.05, 0.2)


async def statuses(db: Path, cwd: Path) -> dict[str, Any]:
    done = await batcher("status", "--db", str(db), "--json", env=cli_env(None), cwd=cwd)
    assert done.code == 0, done.err
    jobs: dict[str, Any] = json.loads(done.out)["jobs"]
    return jobs


async def test_an_outage_of_generations_is_retried_after_the_cause_is_fixed(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, fail_rate=1.0)  # every generation fails, as in an outage
    m = manifest(tmp_path / "outage.yaml", 4)
    db = tmp_path / "b.db"
    first = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    assert first.code == 1
    assert f"to try them again: batcher retry outage --db {db}" in first.err  # the run names the command
    again = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    assert again.code == 1 and (await statuses(db, tmp_path))["outage"] == {"failed": 4}  # a rerun alone: nothing

    shown = await batcher("retry", "outage", "--db", str(db), "--dry-run", env=cli_env(None), cwd=tmp_path)
    assert shown.code == 0, shown.err
    assert "4 failed tasks to retry (generation 4)" in shown.out
    assert "created again: 4, costing at most $0.268" in shown.out and "nothing was changed" in shown.out
    assert (await statuses(db, tmp_path))["outage"] == {"failed": 4}

    emu.configure(fail_rate=0.0)  # the outage is over
    done = await batcher("retry", "outage", "--db", str(db), env=cli_env(None), cwd=tmp_path)
    assert done.code == 0, done.err
    assert (await statuses(db, tmp_path))["outage"] == {"pending": 4}
    final = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    assert final.code == 0, final.err
    assert (await statuses(db, tmp_path))["outage"] == {"succeeded": 4}


async def test_a_paid_image_that_was_not_saved_is_fetched_again_not_created_again(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, not_image_rate=1.0)  # every download serves an error page, not an image
    m = manifest(tmp_path / "cut.yaml", 3)
    db = tmp_path / "b.db"
    first = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    assert first.code == 1
    assert emu.stats.creates_accepted == 3

    # only what was asked for: generation failures are not these
    other = await batcher("retry", "cut", "--db", str(db), "--only", "generation", env=cli_env(None), cwd=tmp_path)
    assert "0 failed tasks to retry" in other.out and "left failed: download 3" in other.out

    emu.configure(not_image_rate=0.0)
    done = await batcher("retry", "cut", "--db", str(db), "--only", "download", env=cli_env(None), cwd=tmp_path)
    assert done.code == 0, done.err
    assert "fetched again (paid for, not saved; a fresh query for the URL, no charge): 3" in done.out
    assert "created again: 0, costing at most $0" in done.out
    final = await batcher("run", str(m), "--db", str(db), "-q", "--json", env=cli_env(emu), cwd=tmp_path)
    assert final.code == 0, final.err
    head = json.loads(final.out)
    assert head["succeeded"] == 3
    assert emu.stats.creates_accepted == 3  # never created again
    assert head["billed_calls"] == emu.stats.successes == 3  # billed once each


async def test_a_result_the_api_forgot_is_created_again_only_with_recreate(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, truncate_rate=1.0, forget_rate=1.0)
    m = manifest(tmp_path / "forgot.yaml", 2)
    db = tmp_path / "b.db"
    assert (await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)).code == 1
    emu.configure(truncate_rate=0.0, forget_rate=0.0)
    plain = await batcher("retry", "forgot", "--db", str(db), env=cli_env(None), cwd=tmp_path)
    assert "0 failed tasks to retry" in plain.out
    assert "result_lost (paid for: only with --recreate) 2" in plain.out
    asked = await batcher("retry", "forgot", "--db", str(db), "--recreate", env=cli_env(None), cwd=tmp_path)
    assert "created again: 2, costing at most $0.134" in asked.out
    final = await batcher("run", str(m), "--db", str(db), "-q", "--json", env=cli_env(emu), cwd=tmp_path)
    assert final.code == 0, final.err
    head = json.loads(final.out)
    # the first charges stay in the ledger, as known second charges: it holds what the API billed
    assert head["billed_calls"] == emu.stats.successes == 4 and head["known_duplicates"] == 2
    with sqlite3.connect(db) as conn:  # and the budget reads both charges
        assert conn.execute("SELECT spent_micros FROM jobs").fetchone()[0] == 4 * 67_000
