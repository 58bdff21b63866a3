"""Where a job's images go (the real CLI): output.dir relative to the manifest, stored absolute; `--out`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from tests.acceptance.cli_kit import batcher, cli_env

EMULATE = ("--emulate", "--emulate-latency", "fixed:0.05", "-q")


def demo_like(path: Path, n: int, folder: str = "out/demo") -> Path:
    """A manifest like jobs/demo.yaml: a relative output folder and a filename template."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "job": path.stem,
        "size": "1x1",
        "output": {"dir": folder, "filename": "{index:02d}-{slug}-{size}.png"},
        "tasks": [{"prompt": f"Studio shot of product {i}", "slug": f"p{i}"} for i in range(n)],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def stored_job(db: Path) -> tuple[str, str]:
    with sqlite3.connect(db) as conn:
        output_dir, manifest = conn.execute("SELECT output_dir, manifest FROM jobs").fetchone()
    return str(output_dir), str(manifest)


async def report_files(db: Path, cwd: Path) -> list[str]:
    done = await batcher("report", "--db", str(db), "--format", "json", env=cli_env(None), cwd=cwd)
    assert done.code == 0, done.err
    return sorted(str(r["file"]) for r in json.loads(done.out)["tasks"] if r["file"])


async def test_the_same_job_run_from_two_folders_writes_to_one_place(tmp_path: Path) -> None:
    project = tmp_path / "project"
    demo_like(project / "jobs" / "demo.yaml", 4)
    db = tmp_path / "demo.db"
    # from the project: a budget stops the run after two images
    first = await batcher("run", "jobs/demo.yaml", "--db", str(db), "--max-cost", "0.14", *EMULATE,
                          env=cli_env(None), cwd=project)  # fmt: skip
    assert first.code == 3, first.err
    out = project / "jobs" / "out" / "demo"
    assert len(files_under(project)) == 2 and len(files_under(out)) == 2
    # from the manifest's own folder: the rest, into the same place
    second = await batcher("run", "demo.yaml", "--db", str(db), *EMULATE, env=cli_env(None), cwd=project / "jobs")
    assert second.code == 0, second.err
    assert files_under(out) == [f"0{i + 1}-p{i}-1x1.png" for i in range(4)]
    assert files_under(tmp_path) == [f"project/jobs/out/demo/0{i + 1}-p{i}-1x1.png" for i in range(4)]
    assert stored_job(db) == (str(out), str(project / "jobs" / "demo.yaml"))  # absolute, whoever imported it
    assert await report_files(db, tmp_path) == [str(out / f) for f in files_under(out)]


async def test_out_overrides_the_directory_for_run_and_work(tmp_path: Path) -> None:
    m = demo_like(tmp_path / "jobs" / "a.yaml", 2)
    db = tmp_path / "b.db"
    here = tmp_path / "here"
    here.mkdir()
    ran = await batcher("run", str(m), "--db", str(db), "--out", "mine", *EMULATE, env=cli_env(None), cwd=here)
    assert ran.code == 0, ran.err
    assert files_under(tmp_path) == ["here/mine/01-p0-1x1.png", "here/mine/02-p1-1x1.png"]
    assert stored_job(db)[0] == str(tmp_path / "jobs" / "out" / "demo")  # --out is this process's, not stored
    # a worker elsewhere: the job's stored directory, unless its own --out says otherwise
    demo_like(m, 4)
    imported = await batcher("import", str(m), "--db", str(db), env=cli_env(None), cwd=tmp_path)
    assert imported.code == 0, imported.err
    there = tmp_path / "there"
    there.mkdir()
    worked = await batcher("work", "--db", str(db), "--out", "theirs", *EMULATE, env=cli_env(None), cwd=there)
    assert worked.code == 0, worked.err
    assert files_under(there) == ["theirs/03-p2-1x1.png", "theirs/04-p3-1x1.png"]
    assert not (tmp_path / "jobs" / "out").exists()


async def test_a_relative_directory_in_an_older_store_is_the_manifests(tmp_path: Path) -> None:
    m = demo_like(tmp_path / "jobs" / "old.yaml", 2)
    db = tmp_path / "b.db"
    imported = await batcher("import", str(m), "--db", str(db), env=cli_env(None), cwd=tmp_path)
    assert imported.code == 0, imported.err
    with sqlite3.connect(db) as conn:  # as stores imported before directories were stored absolute hold it
        conn.execute("UPDATE jobs SET output_dir = 'out/old'")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    worked = await batcher("work", "--db", str(db), *EMULATE, env=cli_env(None), cwd=elsewhere)
    assert worked.code == 0, worked.err
    assert files_under(tmp_path) == ["jobs/out/old/01-p0-1x1.png", "jobs/out/old/02-p1-1x1.png"]


async def test_a_changed_output_dir_takes_the_tasks_still_to_do(tmp_path: Path) -> None:
    m = demo_like(tmp_path / "edit.yaml", 2, folder="first")
    db = tmp_path / "b.db"
    ran = await batcher("run", str(m), "--db", str(db), *EMULATE, "--json", env=cli_env(None), cwd=tmp_path)
    assert ran.code == 0, ran.err
    demo_like(m, 3, folder="second")
    again = await batcher("run", str(m), "--db", str(db), *EMULATE, "--json", env=cli_env(None), cwd=tmp_path)
    assert again.code == 0, again.err
    head = json.loads(again.out)
    assert (head["succeeded"], head["billed_calls"]) == (3, 3)  # the finished two are not made again
    # finished images stay where they were written, and the report says where each one is
    assert files_under(tmp_path) == ["first/01-p0-1x1.png", "first/02-p1-1x1.png", "second/03-p2-1x1.png"]
    assert await report_files(db, tmp_path) == [str(tmp_path / f) for f in files_under(tmp_path)]
    assert stored_job(db)[0] == str(tmp_path / "second")
