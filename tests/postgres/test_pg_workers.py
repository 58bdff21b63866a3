"""Several `batcher work` processes on one PostgreSQL store against the emulator: one shared account rate,
no task created twice, and a worker killed mid-run has its tasks finished by the others."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import asyncpg
import pytest

from batcher.emulator import Emulator, Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.conftest import StartEmulator

pytestmark = pytest.mark.postgres
RATE = 30.0
HELD_S = 3600.0  # a generation time no test waits out: the test moves the emulator's clock instead


async def worker_rows(pg_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url)
    try:
        return list(await conn.fetch("SELECT worker_id, count(*) AS n FROM api_calls GROUP BY worker_id"))
    finally:
        await conn.close()


async def summary(pg_url: str, cwd: Path) -> dict[str, object]:
    done = await batcher("report", "--db", pg_url, "--format", "json", env=cli_env(None), cwd=cwd)
    assert done.code == 0, done.err
    return dict(json.loads(done.out)["summary"])


def created_twice(emu: Emulator) -> int:
    return sum(n - 1 for n in emu.stats.accepted_by_prompt.values() if n > 1)


async def test_three_workers_share_the_job_and_the_rate(pg_url: str, start_emu: StartEmulator, tmp_path: Path) -> None:
    # No generation finishes until the test moves the emulator's clock, and each worker holds at most 20 tasks:
    # two workers cannot finish the job before a third, slow to start on a loaded machine, has its share.
    emu = await start_emu(latency=Latency("fixed", HELD_S), rate_limit=RATE)
    m = manifest(tmp_path / "shared.yaml", 90)
    env = cli_env(emu)
    assert (await batcher("import", str(m), "--db", pg_url, env=env, cwd=tmp_path)).code == 0
    workers = [await start("work", "--db", pg_url, "--rate", str(RATE), "--max-in-flight", "20", "-q", env=env,
                           cwd=tmp_path) for _ in range(3)]  # fmt: skip
    for _ in range(3000):  # a 41st create is the third worker's (bounded: a minute)
        if emu.stats.creates_accepted > 40:
            break
        await asyncio.sleep(0.02)
    assert emu.stats.creates_accepted > 40, "the third worker never created a task"
    emu.configure(latency=Latency("uniform", 0.2, 0.8))
    emu.advance(HELD_S)  # the held generations finish; the rest take their usual time
    results = await asyncio.gather(*(finish(w) for w in workers))
    assert [r.code for r in results] == [0, 0, 0], [r.err for r in results]
    head = await summary(pg_url, tmp_path)
    assert head["succeeded"] == 90
    assert created_twice(emu) == 0 and emu.stats.creates_accepted == 90
    assert emu.stats.rate_limited <= 3  # one shared bucket: no 429 beyond a few at start
    by_worker = {r["worker_id"]: r["n"] for r in await worker_rows(pg_url)}
    assert len([w for w in by_worker if w]) == 3, by_worker  # every worker did a share


async def test_a_worker_killed_mid_run_has_its_tasks_finished_by_the_others(
    pg_url: str, start_emu: StartEmulator, tmp_path: Path
) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.5, 1.5), rate_limit=RATE)
    m = manifest(tmp_path / "kill.yaml", 60)
    env = cli_env(emu)
    assert (await batcher("import", str(m), "--db", pg_url, env=env, cwd=tmp_path)).code == 0
    victim = await start("work", "--db", pg_url, "--rate", str(RATE), "-q", env=env, cwd=tmp_path)
    for _ in range(400):  # let the victim create some tasks before the others start
        if emu.stats.creates_accepted >= 10:
            break
        await asyncio.sleep(0.02)
    others = [await start("work", "--db", pg_url, "--rate", str(RATE), "-q", env=env, cwd=tmp_path) for _ in range(2)]
    await asyncio.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    await finish(victim)
    results = await asyncio.gather(*(finish(w) for w in others))
    assert [r.code for r in results] == [0, 0], [r.err for r in results]
    head = await summary(pg_url, tmp_path)
    assert head["succeeded"] == 60 and head["tasks"] == 60
    assert created_twice(emu) <= int(str(head["unknown_submissions"]))
    assert (
        int(str(head["billed_calls"]))
        <= emu.stats.successes
        <= int(str(head["billed_calls"])) + int(str(head["unknown_submissions"]))
    )


async def test_three_workers_never_pass_one_budget(pg_url: str, start_emu: StartEmulator, tmp_path: Path) -> None:
    # each worker reads the job's spend and every reservation in flight, of any worker, before each create
    emu = await start_emu(latency=Latency("uniform", 0.3, 0.8))
    m = manifest(tmp_path / "budget.yaml", 30)
    env = cli_env(emu)
    assert (await batcher("import", str(m), "--db", pg_url, env=env, cwd=tmp_path)).code == 0
    workers = [await start("work", "--db", pg_url, "--max-cost", "0.335", "-q", env=env, cwd=tmp_path)
               for _ in range(3)]  # fmt: skip
    results = await asyncio.gather(*(finish(w) for w in workers))
    assert [r.code for r in results] == [3, 3, 3], [r.err for r in results]
    assert emu.stats.creates_accepted <= 5 and emu.stats.successes * 0.067 <= 0.335 + 1e-9
    head = await summary(pg_url, tmp_path)
    assert head["billed_calls"] == emu.stats.successes
    conn = await asyncpg.connect(pg_url)
    try:  # a budget stop is no turn that registers the worker again and again
        assert await conn.fetchval("SELECT count(*) FROM workers") == 3
    finally:
        await conn.close()


async def test_a_worker_whose_clock_runs_ahead_takes_over_no_live_lease(
    pg_url: str, start_emu: StartEmulator, tmp_path: Path
) -> None:
    # the second worker's host clock is 10 minutes ahead: judged by its own clock, every lease of the first
    # worker would have run out long ago; judged by the database's, none has
    faketime = shutil.which("faketime")
    if faketime is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is missing (apt-get install faketime): .ci/run installs it")
        pytest.skip("needs faketime")
    emu = await start_emu(latency=Latency("fixed", 0.5), slow_rate=1.0, slow_s=3.0, fault_kinds=["create"])
    m = manifest(tmp_path / "skew.yaml", 8)
    env = cli_env(emu, BATCHER_LEASE_S="30")
    assert (await batcher("import", str(m), "--db", pg_url, env=env, cwd=tmp_path)).code == 0
    first = await start("work", "--db", pg_url, "-q", env=env, cwd=tmp_path)
    for _ in range(1500):  # its creates are on the wire (the API holds each 3 s before taking it)
        if emu.state.in_flight >= 8:
            break
        await asyncio.sleep(0.02)
    ahead = await start("work", "--db", pg_url, "-q", env=env, cwd=tmp_path, prefix=(faketime, "-f", "+10m"))
    a, b = await asyncio.gather(finish(first), finish(ahead))
    assert (a.code, b.code) == (0, 0), (a.err, b.err)
    assert emu.stats.creates_accepted == 8  # nothing taken over and created again
    head = await summary(pg_url, tmp_path)
    assert head["unknown_submissions"] == 0 and head["succeeded"] == 8
