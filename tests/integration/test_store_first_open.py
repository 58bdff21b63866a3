"""Processes that open a new store at the same moment all get in (two runs started together on a new store).

SQLite answers "database is locked" at once, without waiting on the busy timeout, to one of several connections
that turn a new, empty file to WAL together: about once in 150 such opens here before `apply_pragmas` retried.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

from batcher.store.database import apply_pragmas

PROCESSES = 3
STORES = 150  # new stores opened by every process at once: a race lost even once in 150 opens shows


def _open_each(paths: list[str], barrier: Any, errors: Any) -> None:
    for path in paths:
        barrier.wait()  # every process opens the same new store at the same moment
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            apply_pragmas(conn)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("COMMIT")
            conn.close()
        except sqlite3.Error as e:
            errors.put(f"{Path(path).name}: {e}")


def test_processes_opening_a_new_store_together_all_get_in(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"s{i}.db") for i in range(STORES)]
    for path in paths:
        Path(path).touch()  # as `Store.open` makes it: an empty, private file
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(PROCESSES), ctx.Queue()
    workers = [ctx.Process(target=_open_each, args=(paths, barrier, errors)) for _ in range(PROCESSES)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    assert failed == []
    for path in paths:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (PROCESSES,)
