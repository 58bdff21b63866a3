"""What the benchmark scripts share: the emulator in its own process, and a command measured while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil


class EmulatorProcess:
    """`python -m batcher.emulator` on a free loopback port, so its CPU is not the client's."""

    def __init__(self, *knobs: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batcher.emulator", "--port", "0", "--max-events", "0", *knobs],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        fields = dict(part.split("=", 1) for part in self.proc.stdout.readline().split()[2:])
        self.base_url, self.key = fields["base_url"], fields["api_key"]
        self.origin = self.base_url.split("/api/")[0]

    def env(self) -> dict[str, str]:
        return {"LINKMODEL_BASE_URL": self.base_url, "LINKMODEL_API_KEY": self.key}

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.origin}/_emulator/stats?events=0") as r:
            return dict(json.load(r))

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.origin}/_emulator/reset", method="POST")).read()

    def api_calls(self) -> int:
        """Creates and polls so far: the requests an account's rate limit counts."""
        requests = self.stats()["requests"]
        assert isinstance(requests, dict)
        return sum(sum(by.values()) for kind, by in requests.items() if kind in ("create", "query"))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


@dataclass
class Sampled:
    code: int
    out: str
    err: str
    wall_s: float
    cpu_s: float  # user + system of the command's process and of the children it waited for
    sys_s: float  # of which system (kernel) time: sockets, files, fsync
    peak_mb: float  # resident set size of the process and its children together, sampled every 20 ms


def sample(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Sampled:
    """Run `cmd`, sampling its memory and CPU time while it runs (a child process it starts counts too: a large
    manifest is expanded in one)."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, cpu, system = 0, 0.0, 0.0
    while proc.poll() is None:
        try:
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, rss)
            t = proc.cpu_times()
            cpu = t.user + t.system + t.children_user + t.children_system
            system = t.system + t.children_system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    return Sampled(proc.returncode, out, err, time.perf_counter() - start, cpu, system, peak / 2**20)
