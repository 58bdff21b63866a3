"""One vs three `batcher work` processes on one PostgreSQL store, against the emulator (its own process).

For each case: tasks per second (import excluded), API calls per image (creates and polls, by the emulator's
accounting), 429s, and the claim overhead per task (time inside claim transactions / tasks claimed, as each
worker reports it). Cases: without a rate limit, and with an account limit of --rate requests/s (workers told
the same rate share it through one token bucket in PostgreSQL).

    BATCHER_TEST_PG_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/pg_workers.py [--tasks 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from benchkit import EmulatorProcess
from sqlalchemy.engine import make_url


async def fresh_database(admin: str) -> str:
    name = f"batcher_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin: str, url: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await conn.close()


def one_case(admin: str, workers: int, tasks: int, rate: float | None, latency: str, tmp: Path) -> dict[str, float]:
    emu = EmulatorProcess("--latency", latency, *(["--rate-limit", str(rate)] if rate else []))
    db = asyncio.run(fresh_database(admin))
    try:
        manifest = tmp / f"w{workers}r{int(rate or 0)}.csv"
        manifest.write_text("prompt\n" + "".join(f"PG bench {workers} {rate} {i}\n" for i in range(tasks)))
        env = {**os.environ, **emu.env()}
        cli = [sys.executable, "-m", "batcher.cli"]
        subprocess.run([*cli, "import", str(manifest), "--db", db], env=env, check=True, capture_output=True)
        extra = ["--rate", str(rate)] if rate else []
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*cli, "work", "--db", db, "-q", "--json", *extra],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        outs = [p.communicate() for p in procs]
        wall = time.perf_counter() - start
        for p, (_, err) in zip(procs, outs, strict=True):
            if p.returncode != 0:
                sys.exit(f"a worker failed ({p.returncode}): {err[-1500:]}")
        claim_ms = []
        for out, _ in outs:
            heads = json.loads(out) if out.strip() else []
            heads = heads if isinstance(heads, list) else [heads]
            claim_ms += [h["worker"]["claim_ms_per_task"] for h in heads if h["worker"].get("claim_ms_per_task")]
        calls = emu.api_calls()
        return {"tasks_per_s": tasks / wall, "calls_per_image": calls / tasks,
                "rate_limited": float(str(emu.stats()["rate_limited"])),
                "claim_ms": statistics.median(claim_ms) if claim_ms else float("nan"), "wall": wall}  # fmt: skip
    finally:
        emu.close()
        asyncio.run(drop_database(admin, db))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--latency", default="uniform:0.5:2")
    args = ap.parse_args()
    admin = os.environ.get("BATCHER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    admin = admin.replace("postgresql+asyncpg://", "postgresql://")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (None, args.rate):
            for workers in (1, 3):
                r = one_case(admin, workers, args.tasks, rate, args.latency, Path(tmp))
                rows.append((workers, rate, r))
                print(f"done: {workers} worker(s), limit {rate or 'none'}: {r['wall']:.1f} s", file=sys.stderr)
    print(f"\n{args.tasks} tasks per case, emulator latency {args.latency}; PostgreSQL store\n")
    print(f"{'workers':>7} {'limit/s':>8} {'tasks/s':>8} {'calls/img':>9} {'429s':>6} {'claim ms/task':>14}")
    for workers, rate, r in rows:
        print(f"{workers:7d} {rate or '-':>8} {r['tasks_per_s']:8.1f} {r['calls_per_image']:9.2f} "
              f"{int(r['rate_limited']):6d} {r['claim_ms']:14.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
