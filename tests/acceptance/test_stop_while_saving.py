"""A stop in the window between an image's rename into place and the commit that records it: the real CLI, the
LinkModel emulator, and another process holding the store's write lock so that the window stays open for as long
as the test needs (every commit of the run waits for the lock; the download and the rename do not).

Seen once in the chaos run: a SIGINT landed there, the file stood under the task's name with no record, the resume
fetched the image again, the emulator served an error page that time, and the task failed ("nothing was written")
beside a good file nobody claimed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Emulator, Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.acceptance.fs_faults import store_locked
from tests.conftest import StartEmulator

pytestmark = pytest.mark.slow

LATENCY = Latency("fixed", 4.0)  # long enough to lock the store between the create's commit and the Success


def task_row(db: Path) -> dict[str, Any]:
    """The one task's row; empty while the run has not made it yet."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT status, billed_at, output_path, sha256, failure, last_error FROM tasks").fetchone()
    except sqlite3.OperationalError:  # the store is being created
        return {}
    finally:
        conn.close()
    return dict(row) if row is not None else {}


async def until(what: str, check: Any) -> None:
    for _ in range(1200):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"waited in vain for {what}")


async def renamed_under_a_locked_store(tmp_path: Path, emu: Emulator, sig: signal.Signals) -> tuple[Path, Path, Path]:
    """Run a one-task job; once its create is committed, lock the store; once its image stands under its final
    name (the success commit now waits for the lock), send `sig`; then let go of the lock."""
    m, db = manifest(tmp_path / "saving.yaml", 1), tmp_path / "b.db"
    out = tmp_path / "out" / "saving"
    proc = await start("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    await until("the create's commit", lambda: db.exists() and task_row(db).get("status") == "submitted")
    with store_locked(db):
        await until("the image under its name", lambda: (out / "0.png").exists() or proc.returncode is not None)
        assert proc.returncode is None, "the run ended while its store was locked"
        proc.send_signal(sig)
        if sig != signal.SIGKILL:
            await asyncio.sleep(0.5)  # the stop reaches its last commits, which wait for the lock
    done = await finish(proc)
    # a graceful stop of a run whose last task just succeeded may find nothing left to stop: it exits 0
    assert done.code in ((130, 0) if sig != signal.SIGKILL else (-signal.SIGKILL,)), done.err
    assert "Traceback" not in done.err, done.err
    return m, db, out


def files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_graceful_stop_never_leaves_a_renamed_image_without_its_record(
    tmp_path: Path, start_emu: StartEmulator, sig: signal.Signals
) -> None:
    emu = await start_emu(latency=LATENCY)
    _, db, out = await renamed_under_a_locked_store(tmp_path, emu, sig)
    row = task_row(db)
    assert files(out) == ["0.png"]
    assert row["status"] == "succeeded", row
    data = (out / "0.png").read_bytes()
    assert row["output_path"] == str(out / "0.png") and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert emu.stats.successes == 1


async def test_a_resume_after_a_kill_adopts_the_image_it_finds_under_the_task_s_name(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=LATENCY)
    m, db, out = await renamed_under_a_locked_store(tmp_path, emu, signal.SIGKILL)
    before = task_row(db)
    assert before["status"] == "submitted" and before["billed_at"] is None, before  # nothing after the lock went in
    good = (out / "0.png").read_bytes()
    downloads = emu.stats.downloads
    emu.configure(not_image_rate=1.0)  # a second download would be an error page: the resume must not need one
    done = await batcher("run", str(m), "--db", str(db), "-q", "--json", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert (head["succeeded"], head["billed_calls"]) == (1, 1), head
    row = task_row(db)
    assert row["status"] == "succeeded" and row["output_path"] == str(out / "0.png"), row
    assert row["sha256"] == hashlib.sha256(good).hexdigest() and (out / "0.png").read_bytes() == good
    assert files(out) == ["0.png"]
    assert emu.stats.downloads == downloads and emu.stats.successes == 1
