"""Commands that only read never write: on a missing store they say so, and create no file (the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, manifest
from tests.conftest import StartEmulator


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("report",), ("report", "--format", "json")])
async def test_status_and_report_in_an_empty_folder_say_there_is_no_store(tmp_path: Path, args: tuple[str]) -> None:
    done = await batcher(*args, env=cli_env(None), cwd=tmp_path)
    assert done.code == 2, done.err
    assert done.err.strip() == (
        f"batcher: error: no job store at {tmp_path / 'batcher.db'} (point --db or BATCHER_DB at one, "
        "or create it with `batcher import` or `batcher run`)"
    )
    assert done.out == ""
    assert _files(tmp_path) == []  # no batcher.db, no -wal, no -shm


@pytest.mark.parametrize("how", ["--db", "env", "url"])
async def test_a_missing_store_named_any_way_is_not_created(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "sub" / "jobs.db"
    args: tuple[str, ...] = ()
    env = cli_env(None)
    if how == "--db":
        args = ("--db", "sub/jobs.db")
    elif how == "url":
        args = ("--db", f"sqlite:///{missing}")
    else:
        env = cli_env(None, BATCHER_DB="sub/jobs.db")
    for command in ("status", "report"):
        done = await batcher(command, *args, env=env, cwd=tmp_path)
        assert done.code == 2 and f"no job store at {missing} " in done.err, done.err
    assert _files(tmp_path) == []


async def test_estimate_and_diff_with_a_missing_store_write_nothing(tmp_path: Path) -> None:
    old = manifest(tmp_path / "old.yaml", 2)
    new = manifest(tmp_path / "new.yaml", 3)
    before = _files(tmp_path)
    for db in ("none.db", f"sqlite:///{tmp_path / 'none.db'}"):
        est = await batcher("estimate", str(new), "--db", db, "--json", env=cli_env(None), cwd=tmp_path)
        assert est.code == 0, est.err
        assert json.loads(est.out)["tasks"] == 3
        change = await batcher("diff", str(old), str(new), "--db", db, "--json", env=cli_env(None), cwd=tmp_path)
        assert change.code == 0, change.err
        against = await batcher("estimate", str(new), "--db", db, "--against", "old", env=cli_env(None), cwd=tmp_path)
        assert against.code == 2 and f"no job store at {tmp_path / 'none.db'} " in against.err, against.err
    assert _files(tmp_path) == before


async def test_reading_an_existing_store_leaves_its_folder_as_it_was(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=Latency("fixed", 0.05))
    m = manifest(tmp_path / "made.yaml", 2)
    db = tmp_path / "store" / "b.db"
    ran = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    assert ran.code == 0, ran.err
    before = _files(db.parent)
    for args in (("status",), ("report",), ("estimate", str(m)), ("diff", str(m), str(m))):
        done = await batcher(*args, "--db", str(db), env=cli_env(None), cwd=tmp_path)
        assert done.code == 0, done.err
        assert _files(db.parent) == before, args
    status = await batcher("status", "--db", str(db), "--json", env=cli_env(None), cwd=tmp_path)
    assert json.loads(status.out)["jobs"]["made"]["succeeded"] == 2
