"""The real CLI in a subprocess: exit codes, summaries, interruptions and resumes, concurrent runs."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path

from batcher.emulator import Emulator, Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, interrupt_after, manifest, start
from tests.conftest import StartEmulator

FAST = Latency("uniform", 0.1, 0.4)
SLOW = Latency("uniform", 0.5, 1.5)
QUICK_RUN = ("--max-in-flight", "16")


async def summary_of(db: Path, cwd: Path) -> dict[str, object]:
    done = await batcher("report", "--db", str(db), "--format", "json", env=cli_env(None), cwd=cwd)
    assert done.code == 0, done.err
    return dict(json.loads(done.out)["summary"])


def no_double_creates(emu: Emulator, unknown: int) -> None:
    twice = sum(n - 1 for n in emu.stats.accepted_by_prompt.values() if n > 1)
    assert twice <= unknown, f"{twice} prompts created more than once with only {unknown} unknown submissions"


async def test_run_reports_json_and_exit_0(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=FAST)
    m = manifest(tmp_path / "clean.yaml", 6)
    done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "--json", "-q", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert (head["job"], head["tasks"], head["succeeded"], head["failed"]) == ("clean", 6, 6, 0)
    assert (head["billed_calls"], head["cost_usd"]) == (6, "0.402")
    assert emu.stats.creates_accepted == 6
    # run again: nothing left to do, nothing paid
    again = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "--json", "-q", env=cli_env(emu), cwd=tmp_path)
    assert again.code == 0 and emu.stats.creates_accepted == 6


async def test_without_a_key_run_refuses_clearly(tmp_path: Path) -> None:
    m = manifest(tmp_path / "nokey.yaml", 2)
    done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), env=cli_env(None), cwd=tmp_path)
    assert done.code == 2
    assert "LINKMODEL_API_KEY" in done.err and "--emulate" in done.err and "Traceback" not in done.err


async def test_a_bad_manifest_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: bad\ntasks:\n  - prompt: ok\n  - prompt: wide\n    size: 7x3\n", encoding="utf-8")
    done = await batcher("run", str(bad), "--db", str(tmp_path / "b.db"), "--emulate", env=cli_env(None), cwd=tmp_path)
    assert done.code == 2
    assert "bad.yaml:5" in done.err and "7x3" in done.err
    assert not (tmp_path / "b.db").exists() or (await summary_or_none(tmp_path)) is None


async def summary_or_none(cwd: Path) -> object:
    done = await batcher("status", "--db", str(cwd / "b.db"), "--json", env=cli_env(None), cwd=cwd)
    jobs = json.loads(done.out)["jobs"]
    return jobs or None


async def test_budget_stop_exits_3(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=FAST)
    m = manifest(tmp_path / "budget.yaml", 10)
    done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "--max-cost", "0.25", "-q",
                         env=cli_env(emu), cwd=tmp_path)  # fmt: skip
    assert done.code == 3, done.err
    assert "budget reached" in done.err and "tasks left" in done.err
    assert emu.stats.creates_accepted == 3  # 3 x $0.067 = $0.201; a fourth could pass $0.25


async def test_sigint_stops_with_130_and_a_resume_finishes(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=SLOW, rate_limit=None)
    m = manifest(tmp_path / "sigint.yaml", 30)
    db = str(tmp_path / "b.db")
    proc = await start("run", str(m), "--db", db, "--max-in-flight", "8", env=cli_env(emu), cwd=tmp_path)
    await interrupt_after(proc, 1.0, emu=emu)
    done = await finish(proc)
    assert done.code == 130, done.err
    assert "resume with: batcher run" in done.err
    partial = await summary_of(Path(db), tmp_path)
    assert int(str(partial["succeeded"])) < 30
    resumed = await batcher("run", str(m), "--db", db, "-q", env=cli_env(emu), cwd=tmp_path)
    assert resumed.code == 0, resumed.err
    head = await summary_of(Path(db), tmp_path)
    assert head["succeeded"] == 30
    no_double_creates(emu, int(str(head["unknown_submissions"])))


async def test_sigterm_behaves_like_ctrl_c(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=SLOW)
    m = manifest(tmp_path / "term.yaml", 20)
    proc = await start("run", str(m), "--db", str(tmp_path / "b.db"), "-q", env=cli_env(emu), cwd=tmp_path)
    await interrupt_after(proc, 0.5, signal.SIGTERM, emu=emu)
    assert (await finish(proc)).code == 130


async def test_kill_9_at_random_moments_then_resume(tmp_path: Path, start_emu: StartEmulator) -> None:
    rng = random.Random(4)
    emu = await start_emu(latency=Latency("uniform", 0.2, 1.0), seed=3)
    m = manifest(tmp_path / "kill.yaml", 40)
    db = str(tmp_path / "b.db")
    for _ in range(5):
        proc = await start("run", str(m), "--db", db, "-q", *QUICK_RUN, env=cli_env(emu), cwd=tmp_path)
        await interrupt_after(proc, rng.uniform(0.0, 1.5), signal.SIGKILL, emu=emu)
        await finish(proc)
    done = await batcher("run", str(m), "--db", db, "-q", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 0, done.err
    head = await summary_of(Path(db), tmp_path)
    assert head["succeeded"] == 40
    no_double_creates(emu, int(str(head["unknown_submissions"])))
    assert (
        int(str(head["billed_calls"]))
        <= emu.stats.successes
        <= int(str(head["billed_calls"])) + int(str(head["unknown_submissions"]))
    )


async def test_two_runs_on_one_store_never_create_a_task_twice(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=FAST)
    m = manifest(tmp_path / "twice.yaml", 40)
    db = str(tmp_path / "b.db")
    first = await start("run", str(m), "--db", db, "-q", "--max-in-flight", "6", env=cli_env(emu), cwd=tmp_path)
    second = await start("run", str(m), "--db", db, "-q", "--max-in-flight", "6", env=cli_env(emu), cwd=tmp_path)
    a, b = await asyncio.gather(finish(first), finish(second))
    assert (a.code, b.code) == (0, 0), (a.err, b.err)
    assert emu.stats.creates_accepted == 40
    assert all(n == 1 for n in emu.stats.accepted_by_prompt.values())
