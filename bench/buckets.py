"""Outputs in a bucket against outputs on the local disk.

1. Makespan of the throughput benchmark (LinkModel emulator, 1,000 tasks, log-normal latency median 2 s, limit
   50 requests/s) with `--out s3://...` on a local S3 server (moto, its own process) against `--out DIR`,
   interleaved (local, S3, local, S3, ...): the median of the pairs' ratios. Target <= 1.05.
2. Client CPU per 1.5 MB image: written to S3 through batcher.storage (conditional create) against written to
   the local disk as the runner does (temporary file, fsync, rename, folder fsync); process CPU seconds.
3. Peak RSS of a fresh process with 100 uploads of 1.5 MB in flight at once (the images it holds included).

    .venv/bin/python bench/buckets.py [--tasks 1000] [--pairs 3] [--images 60] [--repeat 5] [--skip-makespan]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from benchkit import EmulatorProcess
from throughput import MEDIAN_S, SIGMA, run_batcher

from batcher import storage
from batcher.outputs import AtomicFile
from batcher.storage.objects import write_once

IMAGE_BYTES = 1_500_000


def s3_server() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in its own process (its CPU is not the client's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys, time; from moto.server import ThreadedMotoServer; "
            "s = ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False); s.start(); "
            "time.sleep(86400)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError as e:
            if hasattr(e, "code"):
                break
            time.sleep(0.025)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    return proc, endpoint


def make_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT")).read()
    return name


def makespan(args: argparse.Namespace, endpoint: str) -> None:
    emu = EmulatorProcess("--seed", "7", "--latency", f"lognormal:{MEDIAN_S}:{SIGMA}", "--rate-limit", "50")
    ratios, local_s, s3_s = [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp_:
            tmp = Path(tmp_)
            for p in range(args.pairs):
                extra = ["--rate", "50"]
                local = run_batcher(emu, tmp, f"local {p}", args.tasks, str(tmp / f"l{p}.db"),
                                    [*extra, "--out", str(tmp / f"out{p}")])  # fmt: skip
                bucket = make_bucket(endpoint)
                remote = run_batcher(emu, tmp, f"s3 {p}", args.tasks, str(tmp / f"s{p}.db"),
                                     [*extra, "--out", f"s3://{bucket}/run"])  # fmt: skip
                local_s.append(local.makespan_s)
                s3_s.append(remote.makespan_s)
                ratios.append(remote.makespan_s / local.makespan_s)
                print(f"pair {p}: local {local.makespan_s:.1f} s, S3 {remote.makespan_s:.1f} s, "
                      f"ratio {ratios[-1]:.3f}", flush=True)  # fmt: skip
    finally:
        emu.close()
    print(f"makespan, {args.tasks} tasks at 50 req/s: local median {statistics.median(local_s):.1f} s, "
          f"S3 median {statistics.median(s3_s):.1f} s, median ratio S3/local {statistics.median(ratios):.3f} "
          "(target <= 1.05)")  # fmt: skip


async def cpu_per_image(args: argparse.Namespace, endpoint: str) -> None:
    """Interleaved rounds (local, S3, local, S3, ...): the median CPU per image of each."""
    blobs = [os.urandom(IMAGE_BYTES) for _ in range(args.images)]
    bucket = make_bucket(endpoint)
    await write_once(f"s3://{bucket}/warm", b"x")  # the client's start-up is not an image's cost
    local_ms: list[float] = []
    s3_ms: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_:
        for r in range(args.repeat):
            folder = Path(tmp_) / str(r)
            began = time.process_time()
            for i, data in enumerate(blobs):
                sink = AtomicFile(folder / f"{i}.png")
                sink.write(data)
                await asyncio.to_thread(sink.finish, folder / f"{i}.png")
            local_ms.append(1000 * (time.process_time() - began) / len(blobs))
            began = time.process_time()
            for i, data in enumerate(blobs):
                await write_once(f"s3://{bucket}/cpu{r}/{i}.png", data)
            s3_ms.append(1000 * (time.process_time() - began) / len(blobs))
    await storage.close_all()
    print(f"client CPU per 1.5 MB image ({args.images} images a round, {args.repeat} interleaved rounds): "
          f"local median {statistics.median(local_ms):.2f} ms (rounds {', '.join(f'{x:.2f}' for x in local_ms)}), "
          f"S3 median {statistics.median(s3_ms):.2f} ms (rounds {', '.join(f'{x:.2f}' for x in s3_ms)})")  # fmt: skip


def peak_rss(endpoint: str) -> None:
    """100 uploads of 1.5 MB in flight at once, in a fresh process: its RSS before them and its peak."""
    code = (
        "import asyncio, os, sys\n"
        "from batcher import storage\n"
        "from batcher.storage.objects import write_once\n"
        "def mb(field):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(field): return int(line.split()[1]) / 1024\n"
        "async def go(bucket):\n"
        "    await write_once(f's3://{bucket}/warm', b'x')\n"
        "    base = mb('VmRSS:')\n"
        f"    payloads = [os.urandom({IMAGE_BYTES}) for _ in range(100)]\n"
        "    held = mb('VmRSS:')\n"
        "    await asyncio.gather(*(write_once(f's3://{bucket}/rss/{i}.png', d) for i, d in enumerate(payloads)))\n"
        "    await storage.close_all()\n"
        "    print(f'{base:.0f} {held:.0f} {mb(\"VmHWM:\"):.0f}')\n"
        "asyncio.run(go(sys.argv[1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, make_bucket(endpoint)], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    base, held, peak = (float(x) for x in out)
    print(f"peak RSS with 100 uploads of 1.5 MB in flight: {peak:.0f} MB (client started: {base:.0f} MB; with the "
          f"100 images in memory: {held:.0f} MB; the uploads themselves add {peak - held:.0f} MB, "
          f"{(peak - held) / 100:.2f} MB each)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds of the CPU measure")
    parser.add_argument("--skip-makespan", action="store_true")
    args = parser.parse_args()
    proc, endpoint = s3_server()
    try:
        asyncio.run(cpu_per_image(args, endpoint))
        peak_rss(endpoint)
        if not args.skip_makespan:
            makespan(args, endpoint)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
