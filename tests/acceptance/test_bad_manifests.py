"""Bad manifests through the real CLI: `batcher run BAD --db X --emulate` exits 2 with the file and line of each
problem, leaves no job in X (or no X at all) and creates no output directory."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.acceptance.cli_kit import Done, batcher, cli_env

BAD = Path(__file__).resolve().parents[1] / "manifests" / "bad"

# manifest -> "file:line" the error must name (a rows: manifest's problem is in the CSV file it points at)
CASES = {
    "syntax_error.yaml": "syntax_error.yaml:4",
    "unknown_size.yaml": "unknown_size.yaml:5",  # the first task is fine: it must not be imported either
    "filename_dotdot.yaml": "filename_dotdot.yaml:3",
    "python_object_tag.yaml": "python_object_tag.yaml:3",
    "rows_bad_cell.yaml": "rows_bad_size.csv:3",
    "unknown_provider.yaml": "unknown_provider.yaml:2",
    "batch_without_gemini.yaml": "batch_without_gemini.yaml:3",
}


def jobs_in(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        n = conn.execute("SELECT count(*) FROM jobs").fetchone()[0] if "jobs" in tables else 0
        n += conn.execute("SELECT count(*) FROM tasks").fetchone()[0] if "tasks" in tables else 0
    conn.close()
    return int(n)


async def test_bad_manifests_exit_2_with_file_and_line_and_write_nothing(tmp_path: Path) -> None:
    if not BAD.is_dir():
        pytest.skip("the bad-manifest corpus (tests/manifests/bad) is not here")
    corpus = tmp_path / "manifests"
    shutil.copytree(BAD, corpus)
    runs: dict[str, Path] = {}

    async def one(name: str) -> Done:
        work = tmp_path / name.replace(".", "-")
        work.mkdir()
        runs[name] = work
        return await batcher("run", str(corpus / name), "--db", str(work / "x.db"), "--emulate", "-q",
                             env=cli_env(None), cwd=work)  # fmt: skip

    results = dict(zip(CASES, await asyncio.gather(*(one(n) for n in CASES)), strict=True))
    for name, done in results.items():
        assert done.code == 2, (name, done.code, done.err)
        assert CASES[name] in done.err, (name, done.err)
        assert "Traceback" not in done.err, done.err
        assert "pwned" not in done.out + done.err  # the python/object tag was never run
        work = runs[name]
        db = work / "x.db"
        assert not db.exists() or jobs_in(db) == 0, f"{name}: the store holds a job"
        # nothing else in the working directory: no output directory, default (out/JOB) or the manifest's
        assert {p.name for p in work.iterdir()} <= {"x.db", "x.db-wal", "x.db-shm"}, (name, list(work.iterdir()))
    assert sorted(p.name for p in corpus.iterdir()) == sorted(p.name for p in BAD.iterdir())  # nothing written there
