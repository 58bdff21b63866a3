"""Gemini Batch Mode at scale: `batcher run --route batch` against the emulator in its own process.

The emulator (`--provider gemini --image-bytes 1500000`: about 1.5 MB PNGs, a 2 MB base64 line each in a results
file) runs every batch in a fixed `--batch-latency` (default 1 s), so a run's time is the client's own: its
start-up, writing and uploading the shards, the first check of each batch 10 s after its create, then
collecting (streaming each results file line by line, writing each image, recording it in the store).

- scale: `--images` (default 10,000) in shards of 100. Printed: every request the emulator counted (uploads —
  two requests each —, creates, gets, lists, downloads, deletes) per image; the client's CPU per image while
  collecting (the `batcher run` process only, `benchkit.sample`; the window runs from the first download's start,
  read from the store's ledger, to the process's exit) and over the whole run; the wall time; and that the
  ledger matches the emulator: `batch_lines_billed` == images, each display name created once, each key billed
  once, one billed line per succeeded task, the same cost and the same batches. The images are deleted after.
- collect: `--images` (500 here by default) created with `--no-wait`, left to end at the emulator, then collected
  by a second `batcher run`, which is timed from its first results download to the last task it settles (both
  read from the store), so its start-up, its first batch lookup and its exit are left out (the lookups of the
  later batches and the deletes of the collected ones fall inside). Printed: the client's CPU per image in that
  window (user + system, from `benchkit.sample`'s 20 ms timeline), images collected per second of it, and the
  emulator's CPU per image over the whole second run (it builds each results line as it streams it). Medians of
  `--repeat` rounds; the ledger is checked against the emulator as in `scale`. Targets: <= 6 ms per image,
  >= 150 images/s.
- memory: one shard of 100 images (100 tasks, the default shard size): the client's peak RSS (sampled every
  20 ms, children included) while it streams that one 100-image results file — target <= 300 MB.

What it showed (docs/benchmarks.md): about 0.07 requests per image; the runner plans 4 shards (400 lines) a pass
of its loop and creates them after collecting the shards due before them, so the wall time here is rounds of
collecting 4 shards plus a 10 s wait for the new batches' first check.

    .venv/bin/python bench/batch.py [--images 10000] [--image-bytes 1500000] [--batch-latency fixed:1]
    .venv/bin/python bench/batch.py --only collect --images 1000 --repeat 3
    .venv/bin/python bench/batch.py --only memory --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psutil
from benchkit import EmulatorProcess, Sampled, sample

IMAGE_BYTES = 1_500_000
MEMORY_TARGET_MB = 300.0
SHARD = 100  # the route's default requests per shard


@dataclass
class BatchRun:
    images: int
    run: Sampled
    head: dict[str, object]
    stats: dict[str, object]
    emulator_cpu_s: float
    collect_cpu_s: float
    collect_wall_s: float
    problems: list[str]


def cpu_at(timeline: list[tuple[float, float]], at: float) -> float:
    """The process's CPU seconds at epoch time `at`, from the samples taken every 20 ms."""
    i = bisect_left(timeline, (at, -1.0))
    return timeline[min(i, len(timeline) - 1)][1] if timeline else 0.0


def emulator_cpu(emu: EmulatorProcess) -> float:
    t = psutil.Process(emu.proc.pid).cpu_times()
    return float(t.user + t.system)


def run_batch(emu: EmulatorProcess, tmp: Path, tag: str, images: int) -> BatchRun:
    """`batcher run --provider gemini --route batch` of `images` new prompts, sampled, then checked against the
    emulator's counters; exits unless every image succeeded."""
    manifest = tmp / f"{tag}.csv"
    manifest.write_text("prompt\n" + "".join(f"Batch bench {tag} {i}\n" for i in range(images)))
    db, out = tmp / f"{tag}.db", tmp / f"out-{tag}"
    emu.reset()
    env = {**os.environ, **emu.env()}
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(manifest), "--provider", "gemini", "--route", "batch",
           "--db", str(db), "--out", str(out), "-q", "--json"]  # fmt: skip
    timeline: list[tuple[float, float]] = []
    emu_before = emulator_cpu(emu)
    run = sample(cmd, env, tmp, timeline)
    emu_cpu = emulator_cpu(emu) - emu_before
    if run.code != 0:
        sys.exit(f"batcher failed ({run.code}): {run.err[-2000:]}")
    head = json.loads(run.out)
    if head["succeeded"] != images:
        sys.exit(f"batcher finished {head['succeeded']} of {images}: {run.out[-2000:]}")
    stats = emu.stats()
    problems = check_ledger(db, out, images, head, stats)
    with sqlite3.connect(db) as conn:
        (first,) = conn.execute("SELECT min(at) FROM api_calls WHERE kind = 'download'").fetchone()
    end = timeline[-1][0] if timeline else 0.0
    collect_cpu = run.cpu_s - cpu_at(timeline, float(first))
    shutil.rmtree(out, ignore_errors=True)  # 1.5 MB an image: 15 GB for 10,000
    return BatchRun(images, run, head, stats, emu_cpu, collect_cpu, end - float(first), problems)


def check_ledger(db: Path, out: Path, images: int, head: dict[str, object], stats: dict[str, object]) -> list[str]:
    """What does not match between the store and the emulator's counters (empty: everything does)."""
    problems: list[str] = []

    def expect(what: str, ours: object, theirs: object) -> None:
        if ours != theirs:
            problems.append(f"{what}: store {ours!r}, emulator {theirs!r}")

    by_name = stats["batches_by_display_name"]
    by_key = stats["batch_lines_by_key"]
    assert isinstance(by_name, dict) and isinstance(by_key, dict)
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT display_name FROM submissions")]
        billed_keys = "SELECT key FROM tasks WHERE status = 'succeeded' AND billed_at IS NOT NULL"
        keys = [r[0] for r in conn.execute(billed_keys)]
        (cost_micros,) = conn.execute("SELECT coalesce(sum(cost_micros), 0) FROM tasks").fetchone()
    expect("batch lines billed", images, stats["batch_lines_billed"])
    expect("billed lines of succeeded tasks", len(keys), stats["batch_lines_billed"])
    expect("batches created", len(names), stats["batches_created"])
    expect("display names", sorted(names), sorted(by_name))
    doubled = {n: c for n, c in by_name.items() if c != 1}
    if doubled:
        problems.append(f"display names created more than once: {doubled}")
    expect("keys billed", sorted(keys), sorted(by_key))
    twice = {k: c for k, c in by_key.items() if c != 1}
    if twice:
        problems.append(f"keys billed more than once: {len(twice)}")
    billed = Decimal(str(stats["cost_usd"]))
    expect("cost USD (run summary)", Decimal(str(head["cost_usd"])), billed)
    expect("cost micros (tasks)", cost_micros, int(billed * 1_000_000))
    expect("files uploaded", len(names), stats["files_uploaded"])
    expect("files deleted (inputs and results)", 2 * len(names), stats["files_deleted"])
    pngs = sum(1 for _ in out.rglob("*.png"))
    expect("images on disk", images, pngs)
    return problems


def requests_by_kind(stats: dict[str, object]) -> dict[str, int]:
    requests = stats["requests"]
    assert isinstance(requests, dict)
    return {kind: sum(by.values()) for kind, by in requests.items()}


def ledger_calls(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT kind, count(*) FROM api_calls GROUP BY kind").fetchall())


def scale(args: argparse.Namespace) -> None:
    n = args.images
    knobs = ["--image-bytes", str(args.image_bytes), "--batch-latency", args.batch_latency]
    runs: list[BatchRun] = []
    with EmulatorProcess(*knobs, provider="gemini") as emu, tempfile.TemporaryDirectory(dir=args.tmp) as tmp_:
        tmp = Path(tmp_)
        for i in range(args.repeat):
            r = run_batch(emu, tmp, f"scale{i}", n)
            runs.append(r)
            kinds = requests_by_kind(r.stats)
            calls = sum(kinds.values())
            print(f"  run {i}: {r.run.wall_s:.1f} s wall, {r.run.cpu_s:.1f} s client CPU ({r.run.sys_s:.1f} s system), "
                  f"collecting {r.collect_cpu_s:.1f} s CPU in {r.collect_wall_s:.1f} s; emulator {r.emulator_cpu_s:.1f} s "
                  f"CPU; {calls} requests {kinds}; ledger rows {ledger_calls(tmp / f'scale{i}.db')}; "
                  f"peak RSS {r.run.peak_mb:.0f} MB; {'ledger matches' if not r.problems else r.problems}",
                  file=sys.stderr, flush=True)  # fmt: skip
    med = statistics.median
    calls_per = [sum(requests_by_kind(r.stats).values()) / n for r in runs]
    collect = [r.collect_cpu_s / n * 1000 for r in runs]
    whole = [r.run.cpu_s / n * 1000 for r in runs]
    walls = [r.run.wall_s for r in runs]
    last = runs[-1]
    print(f"\nscale: {n} images of about {args.image_bytes / 2**20:.2f} MB by Batch Mode, {n // SHARD} shards of "
          f"{SHARD}, batch latency {args.batch_latency}; medians of {len(runs)} runs")  # fmt: skip
    print(f"  API requests per image: {med(calls_per):.4f} ({requests_by_kind(last.stats)} in the last run)")
    print(f"  client CPU per image while collecting: {med(collect):.2f} ms (runs: {', '.join(f'{x:.2f}' for x in collect)});"
          f" over the whole run: {med(whole):.2f} ms")  # fmt: skip
    print(f"  wall {med(walls):.1f} s (runs: {', '.join(f'{x:.1f}' for x in walls)}); collecting "
          f"{med(r.collect_wall_s for r in runs):.1f} s, {n / med(r.collect_wall_s for r in runs):.0f} images/s; "
          f"emulator CPU {med(r.emulator_cpu_s for r in runs) / n * 1000:.2f} ms per image; "
          f"client peak RSS {med(r.run.peak_mb for r in runs):.0f} MB")  # fmt: skip
    bad = [p for r in runs for p in r.problems]
    names = last.stats["batches_by_display_name"]
    assert isinstance(names, dict)
    print(f"  ledger vs emulator: {'matches in every run' if not bad else bad} (batch_lines_billed "
          f"{last.stats['batch_lines_billed']}, {len(names)} display names each created once, "
          f"cost ${last.stats['cost_usd']})")  # fmt: skip


@dataclass
class Collected:
    cpu_s: float  # the client's, from its first results download to the last task settled
    wall_s: float
    emulator_cpu_s: float  # the emulator's over the whole second run (its lookups, downloads and deletes)
    problems: list[str]


def collect_round(emu: EmulatorProcess, tmp: Path, tag: str, images: int, batch_latency_s: float) -> Collected:
    """Create every shard with `--no-wait`, let the batches end, then collect them all in a second run."""
    manifest = tmp / f"{tag}.csv"
    manifest.write_text("prompt\n" + "".join(f"Collect bench {tag} {i}\n" for i in range(images)))
    db, out = tmp / f"{tag}.db", tmp / f"out-{tag}"
    emu.reset()
    env = {**os.environ, **emu.env()}
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(manifest), "--provider", "gemini", "--route", "batch",
           "--db", str(db), "--out", str(out), "-q", "--json"]  # fmt: skip
    created = sample([*cmd, "--no-wait"], env, tmp)
    if created.code != 5:  # SUBMITTED: every shard created, none collected
        sys.exit(f"batcher --no-wait exited {created.code}: {created.err[-2000:]}")
    time.sleep(batch_latency_s + 0.5)
    timeline: list[tuple[float, float]] = []
    emu_before = emulator_cpu(emu)
    run = sample(cmd, env, tmp, timeline)
    emu_cpu = emulator_cpu(emu) - emu_before
    if run.code != 0:
        sys.exit(f"batcher failed ({run.code}): {run.err[-2000:]}")
    head = json.loads(run.out)
    problems = check_ledger(db, out, images, head, emu.stats())
    with sqlite3.connect(db) as conn:
        (first,) = conn.execute("SELECT min(at) FROM api_calls WHERE kind = 'download'").fetchone()
        (last,) = conn.execute("SELECT max(finished_at) FROM tasks").fetchone()
    shutil.rmtree(out, ignore_errors=True)
    cpu = cpu_at(timeline, float(last)) - cpu_at(timeline, float(first))
    return Collected(cpu, float(last) - float(first), emu_cpu, problems)


def collect(args: argparse.Namespace) -> None:
    n = args.images
    latency = args.batch_latency
    if not latency.startswith("fixed:"):
        sys.exit("collect: --batch-latency must be fixed:S (the bench waits that long for the batches to end)")
    knobs = ["--image-bytes", str(args.image_bytes), "--batch-latency", latency]
    rounds: list[Collected] = []
    with EmulatorProcess(*knobs, provider="gemini") as emu, tempfile.TemporaryDirectory(dir=args.tmp) as tmp_:
        tmp = Path(tmp_)
        for i in range(args.repeat):
            r = collect_round(emu, tmp, f"collect{i}", n, float(latency.removeprefix("fixed:")))
            rounds.append(r)
            print(f"  round {i}: {r.cpu_s:.2f} s client CPU in {r.wall_s:.2f} s collecting ({n / r.wall_s:.0f} images/s); "
                  f"emulator {r.emulator_cpu_s:.2f} s CPU; {'ledger matches' if not r.problems else r.problems}",
                  file=sys.stderr, flush=True)  # fmt: skip
    med = statistics.median
    per = [r.cpu_s / n * 1000 for r in rounds]
    rates = [n / r.wall_s for r in rounds]
    print(f"\ncollect: {n} images of about {args.image_bytes / 2**20:.2f} MB in {-(-n // SHARD)} ended batches, "
          f"collected by one `batcher run`; medians of {len(rounds)} rounds")  # fmt: skip
    print(f"  client CPU per image while collecting: {med(per):.2f} ms (rounds: {', '.join(f'{x:.2f}' for x in per)})")
    print(f"  collected: {med(rates):.0f} images/s (rounds: {', '.join(f'{x:.0f}' for x in rates)}); emulator CPU "
          f"{med(r.emulator_cpu_s for r in rounds) / n * 1000:.2f} ms per image")  # fmt: skip
    bad = [p for r in rounds for p in r.problems]
    print(f"  ledger vs emulator: {'matches in every round' if not bad else bad}")


def memory(args: argparse.Namespace) -> None:
    knobs = ["--image-bytes", str(args.image_bytes), "--batch-latency", args.batch_latency]
    peaks: list[float] = []
    with EmulatorProcess(*knobs, provider="gemini") as emu, tempfile.TemporaryDirectory(dir=args.tmp) as tmp_:
        tmp = Path(tmp_)
        for i in range(args.repeat):
            r = run_batch(emu, tmp, f"mem{i}", SHARD)
            peaks.append(r.run.peak_mb)
            print(f"  run {i}: peak RSS {r.run.peak_mb:.0f} MB, {r.run.wall_s:.1f} s, shards "
                  f"{r.stats['batches_created']}; {'ledger matches' if not r.problems else r.problems}",
                  file=sys.stderr, flush=True)  # fmt: skip
    peak = statistics.median(peaks)
    print(f"\nmemory: one shard of {SHARD} images of about {args.image_bytes / 2**20:.2f} MB (one results file of "
          f"about {SHARD * args.image_bytes * 4 / 3 / 2**20:.0f} MB); medians of {args.repeat} runs")  # fmt: skip
    print(f"  client peak RSS: {peak:.0f} MB (runs: {', '.join(f'{x:.0f}' for x in peaks)}); "
          f"target <= {MEMORY_TARGET_MB:.0f} MB: {'met' if peak <= MEMORY_TARGET_MB else 'MISSED'}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("scale", "collect", "memory"), default=None)
    ap.add_argument("--images", type=int, default=None, help="images of the scale run [10000] or collect run [500]")
    ap.add_argument("--image-bytes", type=int, default=IMAGE_BYTES)
    ap.add_argument("--batch-latency", default="fixed:1", help="the emulator's create-to-done time of a batch")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tmp", default=None, help="where the store and the images go [TMPDIR]")
    args = ap.parse_args()
    if args.only in (None, "scale"):
        scale(argparse.Namespace(**{**vars(args), "images": args.images or 10_000}))
    if args.only in (None, "collect"):
        collect(argparse.Namespace(**{**vars(args), "images": args.images or 500}))
    if args.only in (None, "memory"):
        memory(args)


if __name__ == "__main__":
    main()
