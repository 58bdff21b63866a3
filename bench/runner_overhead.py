"""Runner overhead and memory (the runner issue's targets), against the emulator in its own process.

- overhead: 5,000 tasks, emulator latency uniform 0.2-1 s, no rate limit: client CPU per finished task
  (user + system seconds of the `batcher run` process, start-up and import included) — target <= 1 ms.
- memory: a 200,000-task run's peak RSS — target < 250 MB (only what is in flight lives in memory).

    .venv/bin/python bench/runner_overhead.py [--tasks 5000] [--repeat 3] [--in-flight 256]
    .venv/bin/python bench/runner_overhead.py --tasks 200000 --repeat 1 --in-flight 512
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil


def start_emulator(latency: str) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batcher.emulator", "--port", "0", "--latency", latency, "--max-events", "0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    return proc, fields["base_url"], fields["api_key"]


def emulator_stats(base_url: str) -> dict[str, object]:
    origin = base_url.split("/api/")[0]
    with urllib.request.urlopen(f"{origin}/_emulator/stats?events=0") as r:
        return dict(json.load(r))


def write_manifest(path: Path, tasks: int, tag: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "filename"])
        for i in range(tasks):
            w.writerow([f"Benchmark image {tag} {i}", f"{i // 1000:03d}/{i}.png"])


def one_run(tasks: int, in_flight: int, tag: str, base_url: str, key: str, tmp: Path) -> dict[str, float]:
    manifest = tmp / f"bench{tag}.csv"
    write_manifest(manifest, tasks, tag)
    env = {**os.environ, "LINKMODEL_BASE_URL": base_url, "LINKMODEL_API_KEY": key}
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(manifest), "--db", str(tmp / f"b{tag}.db"), "-q",
           "--json", "--max-in-flight", str(in_flight)]  # fmt: skip
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, cpu = 0, 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
            t = proc.cpu_times()
            cpu = t.user + t.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}): {err[-2000:]}")
    head = json.loads(out)
    assert head["succeeded"] == tasks, head
    return {"wall": wall, "cpu": cpu, "peak_mb": peak / 2**20, "calls_per_image": float(head["calls_per_image"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency", default="uniform:0.2:1")
    args = ap.parse_args()
    emu, base_url, key = start_emulator(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = []
            for i in range(args.repeat):
                r = one_run(args.tasks, args.in_flight, str(i), base_url, key, Path(tmp))
                runs.append(r)
                print(f"run {i + 1}: {args.tasks:,} tasks in {r['wall']:.1f} s, client CPU {r['cpu']:.2f} s = "
                      f"{1000 * r['cpu'] / args.tasks:.3f} ms/task, peak RSS {r['peak_mb']:.0f} MB, "
                      f"{r['calls_per_image']:.2f} calls/image")  # fmt: skip
        cpu_ms = statistics.median(1000 * r["cpu"] / args.tasks for r in runs)
        print()
        print(f"median client CPU per finished task: {cpu_ms:.3f} ms (target <= 1 ms; start-up included)")
        print(f"median peak RSS: {statistics.median(r['peak_mb'] for r in runs):.0f} MB "
              f"(target < 250 MB for 200,000 tasks)")  # fmt: skip
        print(f"median throughput: {statistics.median(args.tasks / r['wall'] for r in runs):.0f} tasks/s")
        print(f"emulator: {emulator_stats(base_url)['creates_accepted']} creates accepted in all")
    finally:
        emu.terminate()
        emu.wait()


if __name__ == "__main__":
    main()
