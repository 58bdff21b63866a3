"""The store and the output directory failing under the real CLI: locked by another process, read-only, on a full
disk. Each gives one clear line and a non-zero exit (no traceback), and a later run resumes with nothing lost and
nothing paid twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sqlite3
from pathlib import Path

import pytest

from batcher.emulator import Emulator, Latency
from tests.acceptance.cli_kit import Done, batcher, cli_env, finish, interrupt_after, manifest, start
from tests.acceptance.fs_faults import fill, read_only, small_disk, store_locked
from tests.conftest import StartEmulator

pytestmark = pytest.mark.slow

LATENCY = Latency("uniform", 0.3, 1.0)
TASKS = 16
SLOW_RUN = ("-q", "--max-in-flight", "4")  # few tasks at a time, so a fault finds the run in the middle
FAST_FAIL = {"BATCHER_BUSY_TIMEOUT_MS": "300"}  # a locked store fails in 0.3 s instead of 30 s


async def until(emu: Emulator, proc: asyncio.subprocess.Process, *, creates: int = 0, downloads: int = 0) -> None:
    """Wait until the emulator has seen this much of the run (or the run has ended)."""
    for _ in range(1200):
        stats = emu.stats
        if (stats.creates_accepted >= creates and stats.downloads >= downloads) or proc.returncode is not None:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the run made no progress")


def one_clear_error(done: Done, *words: str) -> None:
    """Exit 1, no traceback, and an error line that says what happened."""
    assert done.code == 1, (done.code, done.err)
    assert "Traceback" not in done.err, done.err
    errors = [line for line in done.err.splitlines() if line.startswith("batcher: error:")]
    assert len(errors) == 1, done.err
    assert all(w in errors[0] for w in words), errors[0]


async def resumes_to_the_end(m: Path, db: Path, emu: Emulator, cwd: Path) -> None:
    """A later run finishes the job; every file is whole; no prompt was created twice outside the unknown window;
    the ledger billed every task once."""
    done = await batcher("run", str(m), "--db", str(db), "-q", "--json", env=cli_env(emu), cwd=cwd)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert (head["succeeded"], head["tasks"], head["billed_calls"]) == (TASKS, TASKS, TASKS)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT prompt, output_path, sha256, gen_failures, unknown_count FROM tasks").fetchall()
    conn.close()
    accepted = emu.stats.accepted_by_prompt
    for prompt, path, sha, gen_failures, unknown in rows:
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
        assert accepted[prompt] <= 1 + gen_failures + unknown, prompt
    assert TASKS <= emu.stats.successes <= TASKS + head["unknown_submissions"]


async def test_a_store_locked_by_another_process(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=LATENCY)
    m, db = manifest(tmp_path / "locked.yaml", TASKS), tmp_path / "b.db"
    proc = await start("run", str(m), "--db", str(db), *SLOW_RUN, env=cli_env(emu, **FAST_FAIL), cwd=tmp_path)
    await until(emu, proc, creates=3)
    with store_locked(db):
        one_clear_error(await finish(proc), "locked by another process")
        creates = emu.stats.creates_accepted
        # a run started while the lock is held stops before sending anything
        again = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu, **FAST_FAIL), cwd=tmp_path)
        one_clear_error(again, "locked by another process")
        assert emu.stats.creates_accepted == creates
    await resumes_to_the_end(m, db, emu, tmp_path)


async def test_a_read_only_store(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=LATENCY)
    m, db = manifest(tmp_path / "readonly.yaml", TASKS), tmp_path / "b.db"
    proc = await start("run", str(m), "--db", str(db), *SLOW_RUN, env=cli_env(emu), cwd=tmp_path)
    await interrupt_after(proc, 0.5, signal.SIGINT, emu=emu)
    assert (await finish(proc)).code == 130
    creates = emu.stats.creates_accepted
    with read_only(db):
        done = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
        one_clear_error(done, "read-only")
    assert emu.stats.creates_accepted == creates  # refused before anything was sent
    await resumes_to_the_end(m, db, emu, tmp_path)


async def test_a_full_disk_under_the_store(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=LATENCY)
    m = manifest(tmp_path / "storefull.yaml", TASKS)
    with small_disk(tmp_path / "disk") as disk:
        db = disk / "b.db"
        proc = await start("run", str(m), "--db", str(db), *SLOW_RUN, env=cli_env(emu), cwd=tmp_path)
        await until(emu, proc, creates=3)
        filler = fill(disk)  # the disk fills up in the middle of the run
        one_clear_error(await finish(proc), "disk holding the job store is full", "free space, then resume")
        creates = emu.stats.creates_accepted
        # still full: a new run stops before sending anything
        done = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
        one_clear_error(done, "disk holding the job store is full", "free space, then resume")
        assert emu.stats.creates_accepted == creates
        filler.unlink()
        await resumes_to_the_end(m, db, emu, tmp_path)


async def test_an_unwritable_output_directory(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=LATENCY)
    m, db = manifest(tmp_path / "outro.yaml", TASKS), tmp_path / "b.db"
    out = tmp_path / "out" / "outro"
    out.mkdir(parents=True)
    with read_only(out):
        done = await batcher("run", str(m), "--db", str(db), *SLOW_RUN, env=cli_env(emu), cwd=tmp_path)
        one_clear_error(done, "cannot write", "permission denied")
        assert list(out.iterdir()) == []
    await resumes_to_the_end(m, db, emu, tmp_path)
    # the tasks created before the stop were finished by polling, not created again
    assert emu.stats.creates_accepted == TASKS


async def test_a_full_disk_under_the_output_directory(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=LATENCY)
    with small_disk(tmp_path / "outdisk") as disk:
        m = manifest(tmp_path / "outfull.yaml", TASKS, output={"dir": str(disk / "images"), "filename": "{i}.png"})
        db = tmp_path / "b.db"
        proc = await start("run", str(m), "--db", str(db), *SLOW_RUN, env=cli_env(emu), cwd=tmp_path)
        await until(emu, proc, downloads=2)
        filler = fill(disk)
        one_clear_error(await finish(proc), "no space left", "free space, then run again")
        assert not [p for p in (disk / "images").iterdir() if p.name.endswith(".part")]
        filler.unlink()
        await resumes_to_the_end(m, db, emu, tmp_path)
        assert emu.stats.creates_accepted == TASKS
