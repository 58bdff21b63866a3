"""Running the real `batcher` command in a subprocess, against an emulator served by the test's own loop."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from batcher.emulator import Emulator


@dataclass
class Done:
    code: int
    out: str
    err: str


def cli_env(emu: Emulator | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINKMODEL_", "BATCHER_"))}
    if emu is not None:
        env["LINKMODEL_BASE_URL"] = emu.base_url
        env["LINKMODEL_API_KEY"] = emu.api_key
    env.update(extra)
    return env


async def start(*args: str, env: dict[str, str], cwd: Path, prefix: tuple[str, ...] = ()) -> asyncio.subprocess.Process:
    """`prefix`: a command the CLI runs under (e.g. `faketime -f +20m`, a clock the test sets)."""
    return await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "batcher.cli", *args, env=env, cwd=str(cwd),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, timeout: float = 120.0) -> Done:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def batcher(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120.0, prefix: tuple[str, ...] = ()
) -> Done:
    return await finish(await start(*args, env=env, cwd=cwd, prefix=prefix), timeout)


async def interrupt_after(proc: asyncio.subprocess.Process, seconds: float, sig: int = signal.SIGINT,
                          emu: Emulator | None = None) -> None:  # fmt: skip
    """Send `sig` `seconds` after the run's first create reached the emulator (or after start, without one)."""
    if emu is not None:
        for _ in range(600):
            if emu.stats.creates_accepted or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(seconds)
    if proc.returncode is None:
        proc.send_signal(sig)


def manifest(path: Path, n: int, **top: Any) -> Path:
    doc: dict[str, Any] = {
        "job": path.stem,
        "output": {"dir": str(path.parent / "out" / path.stem), "filename": "{i}.png"},
        "tasks": [{"prompt": f"Catalog photo number {i}", "i": str(i)} for i in range(n)],
    }
    doc.update(top)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _write_locked(db: Path) -> bool:
    """Whether some process holds the SQLite store's write lock right now."""
    conn = sqlite3.connect(db, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


async def freeze_outside_a_write(proc: asyncio.subprocess.Process, db: Path | str) -> None:
    """SIGSTOP `proc` at a moment it holds no write transaction. A process frozen inside one holds SQLite's single
    write lock and stops every other process on the store (the scenario here is a lease running out, not that)."""
    if "://" in str(db):  # PostgreSQL: no store-wide write lock to avoid
        proc.send_signal(signal.SIGSTOP)
        return
    for _ in range(500):
        proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.05)  # the stop is delivered
        if not _write_locked(Path(db)):
            return
        proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.01)
    raise AssertionError("the worker held the store's write lock at every attempt to freeze it")
