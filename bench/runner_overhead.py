"""Runner overhead and memory (the runner issue's targets), against the emulator in its own process.

- overhead: 5,000 tasks, emulator latency uniform 0.2-1 s, no rate limit: client CPU per finished task
  (user + system seconds of the `batcher run` process, start-up and import included) — target <= 1 ms.
- memory: a 200,000-task run's peak RSS — target < 250 MB (only what is in flight lives in memory).
- the floor: the same requests made by a bare aiohttp script (http_floor.py), for comparison: what the HTTP
  client and the kernel's loopback cost per task before batcher does anything.

    .venv/bin/python bench/runner_overhead.py [--tasks 5000] [--repeat 3] [--in-flight 256] [--rate N]
    .venv/bin/python bench/runner_overhead.py --tasks 200000 --repeat 1 --in-flight 512 --no-floor

The disk counts: each image is a new file, so the script first runs a "disk check" (the CPU a new file costs).
On an ext4 without a journal (this workplace's disk) that cost grows tenfold, to about 0.5 ms, for minutes after
many files were deleted (a test run, the last benchmark's clean-up): its inode allocator steps over recently
freed inodes one by one. Set TMPDIR to a folder on another file system to measure apart from that.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import EmulatorProcess, sample


def write_manifest(path: Path, tasks: int, tag: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "filename"])
        for i in range(tasks):
            w.writerow([f"Benchmark image {tag} {i}", f"{i // 1000:03d}/{i}.png"])


def one_run(
    tasks: int, in_flight: int, tag: str, emu: EmulatorProcess, tmp: Path, rate: float | None
) -> dict[str, float]:
    manifest = tmp / f"bench{tag}.csv"
    write_manifest(manifest, tasks, tag)
    env = {**os.environ, **emu.env()}
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(manifest), "--db", str(tmp / f"b{tag}.db"), "-q",
           "--json", "--max-in-flight", str(in_flight), *(["--rate", str(rate)] if rate else [])]  # fmt: skip
    run = sample(cmd, env, tmp)
    if run.code != 0:
        sys.exit(f"run failed ({run.code}): {run.err[-2000:]}")
    head = json.loads(run.out)
    assert head["succeeded"] == tasks, head
    return {
        "wall": run.wall_s,
        "cpu": run.cpu_s,
        "sys": run.sys_s,
        "peak_mb": run.peak_mb,
        "calls_per_image": float(head["calls_per_image"]),
    }


def file_creation_ms(folder: Path, files: int = 2000) -> float:
    """CPU per new file on the disk the images go to. Normally tens of microseconds; an ext4 without a journal
    (this workplace's disk) takes ten times more for about five minutes after many files were deleted, as its
    inode allocator steps over recently freed inodes. The files are kept: deleting them would cause just that."""
    folder.mkdir()
    started = time.process_time()
    for i in range(files):
        with open(folder / f"{i}.part", "xb") as f:
            f.write(b"x" * 4096)
    return 1000 * (time.process_time() - started) / files


def floor_run(tasks: int, in_flight: int, emu: EmulatorProcess, tmp: Path) -> dict[str, float]:
    script = Path(__file__).with_name("http_floor.py")
    cmd = [sys.executable, str(script), emu.base_url, emu.key, "--tasks", str(tasks), "--in-flight", str(in_flight)]
    run = sample(cmd, None, tmp)
    if run.code != 0:
        sys.exit(f"the aiohttp floor failed ({run.code}): {run.err[-2000:]}")
    figures: dict[str, float] = json.loads(run.out)
    print(f"floor: {tasks:,} tasks in {run.wall_s:.1f} s, {figures['cpu_ms_per_task']:.3f} ms/task")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency", default="uniform:0.2:1")
    ap.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare aiohttp runs")
    ap.add_argument(
        "--rate",
        type=float,
        help="requests per second (default: none, as the target says); with a "
        "rate that holds the pool back, the CPU a task costs when requests are spread out evenly",
    )
    args = ap.parse_args()
    with EmulatorProcess("--latency", args.latency) as emu:
        with tempfile.TemporaryDirectory() as tmp:
            disk = file_creation_ms(Path(tmp) / "disk-check")
            print(f"disk check: creating a file here costs {disk:.3f} ms of CPU")
            # imports, store, one task
            startup = one_run(1, args.in_flight, "startup", emu, Path(tmp), args.rate)["cpu"]
            runs = []
            for i in range(args.repeat):
                r = one_run(args.tasks, args.in_flight, str(i), emu, Path(tmp), args.rate)
                runs.append(r)
                print(f"run {i + 1}: {args.tasks:,} tasks in {r['wall']:.1f} s, client CPU {r['cpu']:.2f} s = "
                      f"{1000 * r['cpu'] / args.tasks:.3f} ms/task ({1000 * r['sys'] / args.tasks:.3f} of it in the "
                      f"kernel), peak RSS {r['peak_mb']:.0f} MB, {r['calls_per_image']:.2f} calls/image")  # fmt: skip
            floors = [floor_run(args.tasks, args.in_flight, emu, Path(tmp)) for _ in range(args.repeat * args.floor)]
        cpu_ms = statistics.median(1000 * r["cpu"] / args.tasks for r in runs)
        print()
        steady = statistics.median(1000 * (r["cpu"] - startup) / args.tasks for r in runs)
        kernel = statistics.median(1000 * r["sys"] / args.tasks for r in runs)
        print(f"median client CPU per finished task: {cpu_ms:.3f} ms with start-up ({kernel:.3f} ms in the kernel), "
              f"{steady:.3f} ms without (a one-task run costs {startup:.2f} s) — target <= 1 ms")  # fmt: skip
        if floors:
            floor = statistics.median(f["cpu_ms_per_task"] for f in floors)
            print(f"median CPU per task of the same requests from a bare aiohttp script: {floor:.3f} ms "
                  f"({statistics.median(f['requests_per_task'] for f in floors):.2f} requests per task); "
                  f"batcher's own share, start-up aside: {steady - floor:.3f} ms")  # fmt: skip
        print(f"median peak RSS: {statistics.median(r['peak_mb'] for r in runs):.0f} MB "
              f"(target < 250 MB for 200,000 tasks)")  # fmt: skip
        print(f"median throughput: {statistics.median(args.tasks / r['wall'] for r in runs):.0f} tasks/s")
        print(f"emulator: {emu.stats()['creates_accepted']} creates accepted in all")


if __name__ == "__main__":
    main()
