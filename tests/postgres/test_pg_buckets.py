"""Many machines, one job: three `batcher work` processes, each with its own working folder, HOME and TMPDIR (no
shared disk), on one PostgreSQL store, writing to one S3 bucket; one is killed mid-run. Every image lands once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, start
from tests.bucket_kit import S3Server, s3, sha
from tests.conftest import StartEmulator
from tests.postgres.test_pg_workers import created_twice, summary
from tests.storage.test_bucket_runs import report

pytestmark = pytest.mark.postgres
__all__ = ["s3"]
RATE = 30.0


async def test_three_machines_one_bucket_one_killed(
    pg_url: str, start_emu: StartEmulator, tmp_path: Path, s3: S3Server
) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.4, 1.2), rate_limit=RATE)
    bucket = s3.bucket()
    n = 40
    doc: dict[str, Any] = {
        "job": "fleet",
        "output": {"dir": f"s3://{bucket}/fleet", "filename": "{i}.png"},
        "tasks": [{"prompt": f"Catalog photo number {i}", "i": str(i)} for i in range(n)],
    }
    importer = tmp_path / "importer"
    importer.mkdir()
    m = importer / "fleet.yaml"
    m.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    assert (await batcher("import", str(m), "--db", pg_url, env=cli_env(emu), cwd=importer)).code == 0

    def machine(name: str) -> tuple[dict[str, str], Path]:
        home = tmp_path / name
        (home / "tmp").mkdir(parents=True)
        env = cli_env(emu, **s3.env(), HOME=str(home), TMPDIR=str(home / "tmp"), BATCHER_LEASE_S="3")
        return env, home

    work = ("work", "--db", pg_url, "--rate", str(RATE), "-q")
    env0, home0 = machine("m0")
    victim = await start(*work, env=env0, cwd=home0)
    for _ in range(400):
        if emu.stats.creates_accepted >= 8:
            break
        await asyncio.sleep(0.02)
    others = [await start(*work, env=env, cwd=home) for env, home in (machine("m1"), machine("m2"))]
    await asyncio.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    await finish(victim)
    results = await asyncio.gather(*(finish(w) for w in others))
    assert [r.code for r in results] == [0, 0], [r.err for r in results]

    head = await summary(pg_url, tmp_path)
    assert head["succeeded"] == n
    assert created_twice(emu) <= int(str(head["unknown_submissions"]))
    assert int(str(head["billed_calls"])) <= emu.stats.successes
    assert emu.stats.successes <= int(str(head["billed_calls"])) + int(str(head["unknown_submissions"]))
    keys = s3.keys(bucket)
    own = sorted(k for k in keys if ".dup-" not in k)
    assert own == sorted(f"fleet/{i}.png" for i in range(n))  # each image once, under its own key
    rows = (await report(pg_url, tmp_path, cli_env(None, **s3.env())))["tasks"]
    for r in rows:  # the report, from any machine, names objects whose bytes are the recorded ones
        assert r["file"] == f"s3://{bucket}/fleet/{r['task']}"
        assert sha(s3.get(bucket, f"fleet/{r['task']}")) == r["sha256"]
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*"))  # no machine kept an image on its disk
