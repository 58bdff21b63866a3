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
    """`python -m batcher.emulator` on a free loopback port, so its CPU is not the client's.

    `provider` picks the API it emulates: "linkmodel" (creates, polls and downloads) or "gemini" (one
    synchronous generateContent per image); `knobs` are that emulator's own options."""

    def __init__(self, *knobs: str, provider: str = "linkmodel") -> None:
        if provider not in ("linkmodel", "gemini"):
            raise ValueError(f"unknown provider {provider!r}")
        self.provider = provider
        # --max-events is LinkModel's (its event log); the Gemini emulator keeps counters only.
        own = ["--provider", "gemini"] if provider == "gemini" else ["--max-events", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batcher.emulator", "--port", "0", *own, *knobs], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"the emulator did not start (exit {self.proc.returncode})")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        self.base_url, self.key = fields["base_url"], fields["api_key"]
        self.origin = self.base_url.split("/api/")[0]

    def env(self) -> dict[str, str]:
        """What `batcher run --provider ...` reads to reach this emulator."""
        if self.provider == "gemini":
            return {"GEMINI_BASE_URL": self.base_url, "GEMINI_API_KEY": self.key}
        return {"LINKMODEL_BASE_URL": self.base_url, "LINKMODEL_API_KEY": self.key}

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.origin}/_emulator/stats?events=0") as r:
            return dict(json.load(r))

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.origin}/_emulator/reset", method="POST")).read()

    def api_calls(self) -> int:
        """The requests an account's rate limit counts so far: creates and polls (LinkModel), generateContent
        calls (Gemini)."""
        requests = self.stats()["requests"]
        assert isinstance(requests, dict)
        counted = ("generate",) if self.provider == "gemini" else ("create", "query")
        return sum(sum(by.values()) for kind, by in requests.items() if kind in counted)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


CHILDREN_EVERY = 25  # samples between looks for new child processes (0.5 s)


@dataclass
class Sampled:
    code: int
    out: str
    err: str
    wall_s: float
    cpu_s: float  # user + system of the command's process and of the children it waited for
    sys_s: float  # of which system (kernel) time: sockets, files, fsync
    peak_mb: float  # resident set size of the process and its children together, sampled every 20 ms


def sample(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeline: list[tuple[float, float]] | None = None,
) -> Sampled:
    """Run `cmd`, sampling its memory and CPU time while it runs (a child process it starts counts too: a large
    manifest is expanded in one). `timeline`, if given, gets (epoch seconds, CPU seconds so far) at each sample,
    so a phase of the run can be told apart afterwards."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, cpu, system = 0, 0.0, 0.0
    children: list[psutil.Process] = []
    ticks = 0
    while proc.poll() is None:
        try:
            rss = proc.memory_info().rss
            if ticks % CHILDREN_EVERY == 0:  # finding children reads every process's /proc entry: not every 20 ms
                children = proc.children(recursive=True)
            ticks += 1
            for child in children:
                try:
                    rss += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, rss)
            t = proc.cpu_times()
            cpu = t.user + t.system + t.children_user + t.children_system
            system = t.system + t.children_system
            if timeline is not None:
                timeline.append((time.time(), cpu))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    return Sampled(proc.returncode, out, err, time.perf_counter() - start, cpu, system, peak / 2**20)
