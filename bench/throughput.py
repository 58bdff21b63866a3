"""Throughput at the API's limit: batcher against the bound, and against three plain baselines.

Against the emulator (its own process): 1,000 tasks, log-normal latency (median 2 s, sigma 0.5), account limit
50 requests/s over creates and polls. No runner can finish N images faster than about 2N/R + p99 latency.

Rows: batcher with the limit configured (`--rate 50`); batcher with it unknown (a fresh store); batcher with
it unknown but learned by a previous run (the same store, a new job); the provider guide's quick-start loop
(one task at a time, poll every 3 s) on a 20-task slice, extrapolated; a plain concurrent loop (semaphore of 32,
poll every 3 s, sleep 1 s on 429); that loop with LinkModel's own client schedule (first poll at 10 s, then
every 3 s to 1 min, 6 s to 3 min, 10 s after).

    .venv/bin/python bench/throughput.py [--tasks 1000] [--rate 50] [--skip-baselines]

With `--provider gemini`: Gemini online, one synchronous generateContent call per image (the reply holds it).
600 images, log-normal latency median 6 s (sigma 0.5), account limit 10 requests/s; every call counts, so the
bound is N/R + p99 latency. Rows: the limit configured (`--rate 10`), and the limit unknown (a fresh store).
Targets with the limit configured: <= 1.10 x the bound, <= 1.05 calls per image, no 429.

    .venv/bin/python bench/throughput.py --provider gemini [--tasks 600] [--rate 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from benchkit import EmulatorProcess

MODEL = "gemini-3.1-flash-lite-image"
MEDIAN_S, SIGMA = 2.0, 0.5
GEMINI_MEDIAN_S, GEMINI_SIGMA, GEMINI_TASKS, GEMINI_RATE = 6.0, 0.5, 600, 10.0
Z99 = 2.326  # the standard normal's 99th percentile: a log-normal's p99 is median * exp(Z99 * sigma)


@dataclass
class Row:
    name: str
    tasks: int
    makespan_s: float
    calls_per_image: float
    rate_limited: int
    requests: int
    note: str = ""
    process_s: float = 0.0  # the `batcher run` process from start to exit (import, start-up and writes included)


def rate_limited(emu: EmulatorProcess) -> int:
    return int(str(emu.stats()["rate_limited"]))


# --- batcher ------------------------------------------------------------------------------------------


def run_batcher(emu: EmulatorProcess, tmp: Path, name: str, tasks: int, db: str, extra: list[str]) -> Row:
    """One `batcher run` of `tasks` new prompts against the emulator, counted from its stats reset."""
    slug = "".join(c if c.isalnum() else "-" for c in name)
    manifest = tmp / f"{slug}.csv"
    manifest.write_text("prompt\n" + "".join(f"Throughput image {slug} {i}\n" for i in range(tasks)))
    emu.reset()
    env = {**os.environ, **emu.env()}
    provider = ["--provider", "gemini"] if emu.provider == "gemini" else []  # LinkModel: the default, as before
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(manifest), "--db", db, "-q", "--json", *provider, *extra]
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, check=False)
    process_s = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"batcher failed: {done.stderr[-2000:]}")
    head = json.loads(done.stdout)
    if head["succeeded"] != tasks:
        sys.exit(f"batcher finished {head['succeeded']} of {tasks}: {done.stdout[-2000:]}")
    calls = emu.api_calls()
    # The summary's wall_time_s runs from the first call's start to the last call's start: for Gemini, whose one
    # call lasts the whole generation, that leaves the last generation out. Its makespan is read from the ledger.
    makespan = float(head["wall_time_s"]) if emu.provider == "linkmodel" else ledger_makespan(db)
    return Row(name, tasks, makespan, calls / tasks, rate_limited(emu), calls, process_s=process_s)


def ledger_makespan(db: str) -> float:
    """Seconds from the first request sent to the last reply received, from the store's ledger of API calls."""
    with sqlite3.connect(db) as conn:
        first, last = conn.execute(
            "SELECT min(at), max(at + latency_ms / 1000.0) FROM api_calls WHERE kind != 'not_sent'"
        ).fetchone()
    return float(last) - float(first)


# --- the baselines, written plainly -------------------------------------------------------------------


async def request(session: aiohttp.ClientSession, method: str, url: str, **kw: object) -> dict[str, object]:
    while True:
        async with session.request(method, url, **kw) as resp:  # type: ignore[arg-type]
            if resp.status == 429:
                await asyncio.sleep(1.0)
                continue
            body = await resp.json(content_type=None)
            return dict(body)


async def one_task(session: aiohttp.ClientSession, base: str, prompt: str, schedule: Callable[[float], float]) -> None:
    created = await request(session, "POST", f"{base}/image-generation",
                            json={"model": MODEL, "prompt": prompt, "quality": "1K", "size": "1x1"})  # fmt: skip
    task_id = created["data"]["task_id"]  # type: ignore[index]
    start = time.monotonic()
    while True:
        await asyncio.sleep(schedule(time.monotonic() - start))
        polled = await request(session, "GET", f"{base}/query/image-generation", params={"task_id": task_id})
        data = polled["data"]
        assert isinstance(data, dict)
        if data["status"] == "Success":
            async with session.get(data["file_url"]) as resp:
                await resp.read()
            return
        if data["status"] in ("Failed", "Cancelled"):
            return


def every_3s(_age: float) -> float:
    return 3.0


def linkmodel_schedule(age: float) -> float:
    if age < 1.0:
        return 10.0
    return 3.0 if age < 60 else 6.0 if age < 180 else 10.0


async def baseline(emu: EmulatorProcess, name: str, tasks: int, concurrency: int,
                   schedule: Callable[[float], float]) -> Row:  # fmt: skip
    emu.reset()
    headers = {"Authorization": f"Bearer {emu.key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        sem = asyncio.Semaphore(concurrency)

        async def guarded(i: int) -> None:
            async with sem:
                await one_task(session, emu.base_url, f"Baseline {name} {i}", schedule)

        start = time.monotonic()
        await asyncio.gather(*(guarded(i) for i in range(tasks)))
        wall = time.monotonic() - start
    calls = emu.api_calls()
    return Row(name, tasks, wall, calls / tasks, rate_limited(emu), calls)


def run(coro: Awaitable[Row]) -> Row:
    return asyncio.run(coro)  # type: ignore[arg-type]


def linkmodel(args: argparse.Namespace) -> None:
    n, rate = args.tasks or 1000, args.rate or 50.0
    p99 = MEDIAN_S * math.exp(Z99 * SIGMA)
    bound = 2 * n / rate + p99
    emu = EmulatorProcess(
        "--seed", str(args.seed), "--latency", f"lognormal:{MEDIAN_S}:{SIGMA}", "--rate-limit", str(rate)
    )
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_:
            tmp = Path(tmp_)
            rows.append(run_batcher(emu, tmp, "batcher, limit configured", n, str(tmp / "a.db"), ["--rate", str(rate)]))
            rows.append(run_batcher(emu, tmp, "batcher, limit unknown", n, str(tmp / "b.db"), []))
            rows.append(run_batcher(emu, tmp, "batcher, limit learned", n, str(tmp / "b.db"), []))
            if not args.skip_baselines:
                k = args.guide_slice
                guide = run(baseline(emu, "guide quick-start loop", k, 1, every_3s))
                rows.append(Row(guide.name, n, guide.makespan_s * n / k, guide.calls_per_image, guide.rate_limited,
                                guide.requests, f"{k}-task slice, extrapolated"))  # fmt: skip
                rows.append(run(baseline(emu, "semaphore 32, poll 3 s", n, 32, every_3s)))
                rows.append(run(baseline(emu, "semaphore 32, LinkModel schedule", n, 32, linkmodel_schedule)))
    finally:
        emu.close()
    print(f"\n{n} tasks, log-normal latency median {MEDIAN_S} s sigma {SIGMA} (p99 {p99:.1f} s), limit {rate:g}/s; "
          f"bound 2N/R + p99 = {bound:.1f} s\n")  # fmt: skip
    print(f"{'runner':36} {'makespan s':>10} {'/ bound':>8} {'calls/img':>9} {'429s':>6} {'429 %':>6}  note")
    for r in rows:
        share = 100 * r.rate_limited / max(r.requests, 1)
        print(f"{r.name:36} {r.makespan_s:10.1f} {r.makespan_s / bound:8.2f} {r.calls_per_image:9.2f} "
              f"{r.rate_limited:6d} {share:6.2f}  {r.note}")  # fmt: skip
    print("\ncalls/img counts creates and polls (the requests the account limit counts); downloads are file hosting.")


def gemini(args: argparse.Namespace) -> None:
    """Gemini online: each row `--repeat` times (a fresh store each), the median and the runs printed."""
    n, rate = args.tasks or GEMINI_TASKS, args.rate or GEMINI_RATE
    p99 = GEMINI_MEDIAN_S * math.exp(Z99 * GEMINI_SIGMA)
    bound = n / rate + p99
    knobs = ["--seed", str(args.seed), "--latency", f"lognormal:{GEMINI_MEDIAN_S}:{GEMINI_SIGMA}"]
    emu = EmulatorProcess(*knobs, "--rate-limit", str(rate), provider="gemini")
    runs: dict[str, list[Row]] = {"batcher, limit configured": [], "batcher, limit unknown": []}
    try:
        with tempfile.TemporaryDirectory() as tmp_:
            tmp = Path(tmp_)
            for i in range(args.repeat):
                for name, extra in (("batcher, limit configured", ["--rate", str(rate)]),
                                    ("batcher, limit unknown", [])):  # fmt: skip
                    db = str(tmp / f"{name.split()[-1]}-{i}.db")  # a fresh store: nothing learned before
                    row = run_batcher(emu, tmp, f"{name} {i}", n, db, extra)
                    runs[name].append(row)
                    print(f"  {row.name}: {row.makespan_s:.1f} s, {row.calls_per_image:.3f} calls/img, "
                          f"{row.rate_limited} 429s", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        emu.close()
    print(f"\nGemini online, {n} images, log-normal latency median {GEMINI_MEDIAN_S:g} s sigma {GEMINI_SIGMA} "
          f"(p99 {p99:.1f} s), limit {rate:g}/s; bound N/R + p99 = {bound:.1f} s; medians of {args.repeat} runs\n")  # fmt: skip
    print(f"{'runner':28} {'makespan s':>10} {'/ bound':>8} {'calls/img':>9} {'429s':>6} {'process s':>9}  "
          "runs (makespan s / calls per image / 429s)")  # fmt: skip
    for name, rows in runs.items():
        makespan = statistics.median(r.makespan_s for r in rows)
        calls = statistics.median(r.calls_per_image for r in rows)
        limited = statistics.median(r.rate_limited for r in rows)
        process = statistics.median(r.process_s for r in rows)
        each = ", ".join(f"{r.makespan_s:.1f}/{r.calls_per_image:.3f}/{r.rate_limited}" for r in rows)
        print(f"{name:28} {makespan:10.1f} {makespan / bound:8.3f} {calls:9.3f} {limited:6g} {process:9.1f}  {each}")
    print(
        "\nmakespan: first request sent to last reply received (the store's ledger); process s: `batcher run` from "
        "start to exit.\ncalls/img: generateContent requests the emulator counted / images; targets with the limit "
        "configured: <= 1.10 x bound, <= 1.05 calls/img, 0 429s."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--provider", choices=("linkmodel", "gemini"), default="linkmodel")
    ap.add_argument("--tasks", type=int, default=None, help="default 1000 (LinkModel), 600 (Gemini)")
    ap.add_argument("--rate", type=float, default=None, help="the account limit, req/s: default 50 / 10")
    ap.add_argument("--guide-slice", type=int, default=20)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="Gemini: runs of each row (the median is printed)")
    args = ap.parse_args()
    if args.provider == "gemini":
        gemini(args)
    else:
        linkmodel(args)


if __name__ == "__main__":
    main()
