"""The real CLI with chains and the cache: kill -9 in the middle of a chain, bad chains, diff, the jobs/ examples."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import yaml

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, interrupt_after, start
from tests.acceptance.test_cli_run import no_double_creates
from tests.conftest import StartEmulator

REPO = Path(__file__).resolve().parents[2]


def chain_manifest(path: Path) -> Path:
    doc: dict[str, Any] = {
        "job": path.stem,
        "output": {"dir": str(path.parent / "out" / path.stem), "filename": "{slug}.png"},
        "tasks": [
            {"name": "base", "prompt": "a white mug", "slug": "1-base"},
            {"name": "blue", "from": "base", "prompt": "make it blue", "slug": "2-blue"},
            {"name": "sticker", "from": "blue", "prompt": "add a sticker", "slug": "3-sticker"},
        ],
        "matrix": {"from": "base", "prompt": "the mug {where}", "where": ["on a desk", "in a kitchen", "outdoors"],
                   "filename": "pose-{index}.png"},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


async def report_of(db: str, cwd: Path) -> dict[str, Any]:
    done = await batcher("report", "--db", db, "--format", "json", env=cli_env(None), cwd=cwd)
    assert done.code == 0, done.err
    return dict(json.loads(done.out))


async def test_kill_9_in_the_middle_of_a_chain_then_resume(tmp_path: Path, start_emu: StartEmulator) -> None:
    rng = random.Random(7)
    emu = await start_emu(latency=Latency("uniform", 0.4, 0.8), seed=5)
    m = chain_manifest(tmp_path / "chain.yaml")
    db = str(tmp_path / "b.db")
    for _ in range(3):
        proc = await start("run", str(m), "--db", db, "-q", env=cli_env(emu), cwd=tmp_path)
        await interrupt_after(proc, rng.uniform(0.2, 1.2), signal.SIGKILL, emu=emu)
        await finish(proc)
    middle = await report_of(db, tmp_path)
    assert middle["summary"]["succeeded"] < 6  # killed before the chain was through
    done = await batcher("run", str(m), "--db", db, "-q", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 0, done.err
    report = await report_of(db, tmp_path)
    rows = {r["key"]: r for r in report["tasks"]}
    assert [r["status"] for r in rows.values()] == ["succeeded"] * 6
    for row in rows.values():
        parent = rows.get(row["from_key"]) if row["from_key"] else None
        if parent is not None:
            assert row["submitted_at"] >= parent["finished_at"], (row["prompt"], parent["prompt"])
    assert sum(1 for r in rows.values() if r["from_key"]) == 5
    no_double_creates(emu, int(report["summary"]["unknown_submissions"]))


async def test_a_cycle_or_a_missing_name_exits_2_with_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "job: bad\n"
        "tasks:\n"
        "  - {name: a, from: b, prompt: x}\n"
        "  - {name: b, from: a, prompt: y}\n"
        "  - {name: c, from: nobody, prompt: z}\n",
        encoding="utf-8",
    )
    for command in ("run", "estimate"):
        args = (command, str(bad), "--db", str(tmp_path / "b.db")) + (("--emulate",) if command == "run" else ())
        done = await batcher(*args, env=cli_env(None), cwd=tmp_path)
        assert done.code == 2, done.err
        assert f"{bad}:3:21: from: 'b' makes a cycle" in done.err
        assert f"{bad}:4:21: from: 'a' makes a cycle" in done.err
        assert f"{bad}:5:21: from: 'nobody' names no task" in done.err
        assert "Traceback" not in done.err
    assert not (tmp_path / "b.db").exists()


async def test_a_second_job_is_served_from_the_cache_and_diff_prices_the_change(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.05, 0.15))
    db = str(tmp_path / "b.db")
    first = chain_manifest(tmp_path / "first.yaml")
    assert (await batcher("run", str(first), "--db", db, "-q", env=cli_env(emu), cwd=tmp_path)).code == 0
    second = tmp_path / "second.yaml"
    second.write_text(first.read_text().replace("first", "second").replace("make it blue", "make it green"))
    diff = await batcher("diff", str(first), str(second), "--db", db, "--json", env=cli_env(None), cwd=tmp_path)
    assert diff.code == 0, diff.err
    d = json.loads(diff.out)
    # blue changed, so did the sticker downstream of it (its file name has no key: the same slot)
    assert (d["changed"], d["unchanged"], d["added"], d["removed"], d["to_pay"]) == (2, 4, 0, 0, 2)
    assert d["estimated_cost_usd"] == "0.134"
    est = await batcher("estimate", str(second), "--db", db, "--json", env=cli_env(None), cwd=tmp_path)
    e = json.loads(est.out)
    assert (e["cached"], e["new"], e["already_done"], e["estimated_cost_usd"]) == (4, 2, 0, "0.134")
    run = await batcher("run", str(second), "--db", db, "-q", "--json", env=cli_env(emu), cwd=tmp_path)
    assert run.code == 0, run.err
    head = json.loads(run.out)
    assert (head["succeeded"], head["cached"], head["billed_calls"]) == (6, 4, 2)
    assert emu.stats.creates_accepted == 8
    again = await batcher("run", str(second), "--db", db, "-q", "--no-cache", env=cli_env(emu), cwd=tmp_path)
    assert again.code == 0 and emu.stats.creates_accepted == 8  # done already: --no-cache makes nothing again


async def test_the_jobs_examples_run_with_emulate(tmp_path: Path) -> None:
    for name, tasks, job in (("chain.yaml", 7, "chain-demo"), ("catalog.yaml", 14, "spring-catalog")):
        done = await batcher(  # --out: not into the checkout's out/, where the examples write
            "run", str(REPO / "jobs" / name), "--emulate", "--emulate-latency", "fixed:0.05", "--db",
            str(tmp_path / "b.db"), "-q", "--json", "--out", f"out/{job}", env=cli_env(None), cwd=tmp_path,
        )  # fmt: skip
        assert done.code == 0, done.err
        head = json.loads(done.out)
        assert (head["tasks"], head["succeeded"]) == (tasks, tasks)
    assert (tmp_path / "out" / "chain-demo" / "mug-3-sticker.png").is_file()
