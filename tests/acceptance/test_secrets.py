"""The API key never reaches the store, the logs, the reports, a traceback or `--json` output, and the store is
created readable by its owner only. A distinctive key goes through the real CLI at full debug logging (-vv), with
faults, a kill -9, a rejected key (401), an output error and a resume; then every byte we produced is searched."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path

import pytest

from batcher.emulator import Latency
from tests.acceptance.cli_kit import Done, batcher, cli_env, finish, interrupt_after, manifest, start
from tests.conftest import StartEmulator

KEY = "sk-live-CANARY-7f3a9c2e81d4b6a05e9f"
# the key and pieces of it: a truncated or partly masked copy is a leak too
NEEDLES = [KEY.encode(), KEY[-16:].encode(), KEY[:14].encode()]
FAULTS = {"error_503_rate": 0.1, "drop_rate": 0.05, "malformed_rate": 0.05, "lost_create_rate": 0.1,
          "truncate_rate": 0.1, "fail_rate": 0.05, "fault_kinds": ["create", "query", "download"]}  # fmt: skip
TASKS = 8

pytestmark = pytest.mark.slow


def leaks(name: str, data: bytes) -> list[str]:
    return [f"{name} holds {needle.decode()!r}" for needle in NEEDLES if needle in data]


def store_files(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file()}


async def test_the_key_is_never_written_anywhere(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(api_key=KEY, latency=Latency("uniform", 0.2, 0.8), seed=9, **FAULTS)
    assert emu.api_key == KEY
    m, db = manifest(tmp_path / "secret.yaml", TASKS), tmp_path / "store" / "b.db"
    env = cli_env(emu)
    outputs: list[tuple[str, Done]] = []
    snapshots: dict[str, bytes] = {}

    async def cli(*args: str) -> Done:
        done = await batcher("-vv", *args, env=env, cwd=tmp_path)
        outputs.append((" ".join(args), done))
        return done

    # 1. a run with faults, killed with SIGKILL mid-way: the WAL and shared-memory files stay behind as they were
    proc = await start("-vv", "run", str(m), "--db", str(db), "--max-in-flight", "3", env=env, cwd=tmp_path)
    await interrupt_after(proc, 0.8, signal.SIGKILL, emu=emu)
    outputs.append(("run (killed)", await finish(proc)))
    snapshots.update({f"after kill: {k}": v for k, v in store_files(db).items()})
    killed = outputs[-1][1]
    assert any(k.endswith("-wal") for k in snapshots), (
        "the kill left no WAL to search",
        killed.code,
        killed.err[-2000:],
    )

    # 2. the API stops accepting the key: 401, exit 2
    emu.configure(api_key="rotated-key")
    rejected = await cli("run", str(m), "--db", str(db), "--json")
    assert rejected.code == 2 and "LINKMODEL_API_KEY" in rejected.err, rejected.err
    emu.configure(api_key=KEY)

    # 3. an exception path: the output directory cannot be created (a file is in its way)
    out = tmp_path / "out" / "secret"
    out.parent.mkdir(exist_ok=True)
    saved = out.with_name("secret.saved")
    if out.exists():
        out.rename(saved)
    out.write_text("not a directory")
    blocked = await cli("run", str(m), "--db", str(db), "--json")
    assert blocked.code == 1 and "batcher: error: cannot write" in blocked.err, blocked.err
    out.unlink()
    if saved.exists():
        saved.rename(out)

    # 4. the resume to the end, and every way of looking at the result
    done = await cli("run", str(m), "--db", str(db), "--json")
    assert done.code in (0, 1), done.err  # 1: a generation failed three times, possible at these rates
    assert json.loads(done.out)["tasks"] == TASKS
    looks = await asyncio.gather(
        cli("status", "--db", str(db), "--json"),
        cli("report", "--db", str(db), "--format", "json"),
        *(cli("report", "--db", str(db), "--format", fmt, "-o", str(tmp_path / f"report.{fmt}"))
          for fmt in ("csv", "html")),
    )  # fmt: skip
    assert [d.code for d in looks] == [0, 0, 0, 0], [d.err for d in looks]

    problems: list[str] = []
    for what, result in outputs:
        problems += leaks(f"`batcher {what}` output", (result.out + result.err).encode())
    for name, data in snapshots.items():
        problems += leaks(name, data)
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in everything) and (tmp_path / "report.csv").exists()
    for path in everything:
        problems += leaks(str(path.relative_to(tmp_path)), path.read_bytes())
    assert not problems, problems
    assert not any("Traceback" in r.err for _, r in outputs)

    # the store and its companions are readable by their owner only
    for path in db.parent.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path.name, oct(os.stat(path).st_mode))
