"""Requests per second the emulator sustains on loopback.

Starts ``python -m batcher.emulator`` in a subprocess on a free port, then drives it from this process with
aiohttp: CONCURRENCY workers, each creating a task and then querying it QUERIES_PER_CREATE times, for
RUN_S seconds, RUNS times. Prints requests/s per run, the median and the target.

    .venv/bin/python bench/emulator_throughput.py
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import aiohttp

CONCURRENCY = 64  # requests in flight
QUERIES_PER_CREATE = 3  # a create, then this many queries of it
RUN_S = 3.0  # seconds per run
RUNS = 5
TARGET_RPS = 1500.0  # requests/s
REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"base_url=(\S+) api_key=(\S+)")
CREATE_BODY = {"model": "gemini-3.1-flash-lite-image", "quality": "1K", "size": "16x9"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_emulator() -> tuple[subprocess.Popen[str], str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "batcher.emulator", "--port", str(free_port()), "--latency", "fixed:0.05"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the startup line; empty if the process died
    found = READY.search(line)
    if found is None:
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, found.group(1), found.group(2)


async def worker(session: aiohttp.ClientSession, base: str, headers: dict[str, str], stop_at: float) -> int:
    done = 0
    n = 0
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        n += 1
        async with session.post(
            f"{base}/image-generation", json={**CREATE_BODY, "prompt": f"bench {n}"}, headers=headers
        ) as resp:
            task_id = (await resp.json())["data"]["task_id"]
            done += 1
        for _ in range(QUERIES_PER_CREATE):
            async with session.get(
                f"{base}/query/image-generation", params={"task_id": task_id}, headers=headers
            ) as resp:
                assert (await resp.json())["code"] == 0
                done += 1
    return done


async def one_run(base: str, key: str) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        counts = await asyncio.gather(*(worker(session, base, headers, started + RUN_S) for _ in range(CONCURRENCY)))
        return sum(counts) / (loop.time() - started)


async def main() -> int:
    proc, base, key = start_emulator()
    try:
        rates = []
        for run in range(1, RUNS + 1):
            rate = await one_run(base, key)
            rates.append(rate)
            print(f"run {run}: {rate:,.0f} requests/s")
        median = statistics.median(rates)
        verdict = "OK" if median >= TARGET_RPS else "BELOW TARGET"
        print(f"median: {median:,.0f} requests/s (target >= {TARGET_RPS:,.0f}): {verdict}")
        return 0 if median >= TARGET_RPS else 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
