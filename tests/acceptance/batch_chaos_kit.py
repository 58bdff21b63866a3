"""Chaos for the batch route: several `batcher work` processes on one store, killed with SIGKILL and crossed by
`batcher cancel` at random moments, against a Gemini emulator in a process of its own playing what Google's
service does around a long batch (creates answered by a gateway after the batch was made, a listing that lags,
lines kept and billed by any ending, responses files partial, missing lines, gone or expired, failed batches,
slow get/list/cancel), each at a small rate. Then every guarantee is checked against the emulator's own billing
(batch_chaos_checks.py says what).

One copy serves `bench/chaos.py --route batch` (full size, prints the figures) and
`tests/acceptance/test_batch_chaos.py` (CI size). Synchronous on purpose: everything it drives is another
process. After the last worker the emulator's clock is moved three days on, so every batch still alive at the
API (one a client leaked) ends and bills before its counts are read.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.acceptance.batch_chaos_checks import BatchFigures, bump, verify
from tests.acceptance.chaos_kit import EmulatorProcess

REPO = Path(__file__).resolve().parents[2]
API_KEY = "batch-chaos-key-51e0"  # the emulator's key for the run (not a secret)
JOB = "batchchaos"
SETTLE_S = 3 * 86_400.0  # the emulator's clock moves this far after the run: every batch alive ends

# What Google's service does around a long batch, each at a small rate (emulator knobs, as its CLI spells them).
DEFAULT_BATCH_FAULTS: dict[str, str] = {
    "batch_partial_lines": "true",  # lines finish one by one; other endings keep and bill them
    "batch_create_gateway_rate": "0.04",  # made, then a gateway 502/504
    "batch_create_503_rate": "0.02",  # nothing made
    "batch_create_lost_rate": "0.02",  # made, then the connection closes
    "batch_list_lag_s": "3",  # a new batch is listed 3 s after its create
    "batch_api_latency": "uniform:0:0.3",  # slow get/list/cancel
    "batch_fail_rate": "0.06",  # ends FAILED midway, keeping what it finished
    "batch_ended_no_file_rate": "0.2",  # such an ending with no responses file at all
    "batch_omit_line_rate": "0.01",  # a billed line left out of its responses file
    "batch_results_no_final_newline": "true",
    "batch_line_fail_rate": "0.01",  # a line answered with an error Status (not billed)
    "results_gone_rate": "0.02",  # a responses file gone as soon as it is made (403)
}
FINAL = (0, 1)  # exit codes of a worker that drove every task it could to a final state (1: some failed)
POLL_S = 0.1
CANCELLED_SHARDS = re.compile(r"cancelled (\d+) batch shard")
STARTUP_TIMEOUT_S = 20.0
CANCEL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BatchPlan:
    """One chaos run of the batch route. Kills and cancels land at moments drawn uniformly over `horizon_s`
    seconds from the first worker's start; a killed worker is started again after a uniform 0..restart_s."""

    tasks: int = 300
    workers: int = 3
    kills: int = 8
    cancels: int = 3
    seed: int = 0
    shard: int = 10  # requests per batch
    batch_latency: tuple[float, float] = (2.0, 10.0)  # uniform time from create to done, seconds
    file_ttl_s: float = 120.0  # files (inputs and responses) are deleted this long after they are made
    # the manifest's batch.create_grace_s: how long a listing may lag a create (the emulator's lag is 3 s)
    create_grace_s: float = 15.0
    faults: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_BATCH_FAULTS))
    horizon_s: float = 60.0
    restart_s: float = 3.0
    pg_url: str | None = None  # a PostgreSQL database URL for the store; None: SQLite in the workdir
    max_finishing_runs: int = 6  # workers started after the last event to finish the job, one at a time
    run_timeout_s: float = 900.0


# --- the emulator in a process of its own ---------------------------------------------------------------


class GeminiProcess(EmulatorProcess):
    """`python -m batcher.emulator --provider gemini --port 0 ...`; its counters and clock over HTTP."""

    def __init__(self, plan: BatchPlan) -> None:
        lo, hi = plan.batch_latency
        self.args = [sys.executable, "-m", "batcher.emulator", "--provider", "gemini", "--port", "0",
                     "--seed", str(plan.seed), "--api-key", API_KEY, "--batch-latency", f"uniform:{lo}:{hi}",
                     "--file-ttl-s", str(plan.file_ttl_s)]  # fmt: skip
        for knob, value in plan.faults.items():
            self.args += ["--" + knob.replace("_", "-"), value]
        self.proc = None
        self.base_url = ""
        self.api_key = API_KEY

    def __enter__(self) -> GeminiProcess:
        super().__enter__()
        return self

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock on: batches end, files expire."""
        request = urllib.request.Request(f"{self.origin}/_emulator/advance?seconds={seconds}", method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()


# --- the job and its processes --------------------------------------------------------------------------


def write_manifest(path: Path, plan: BatchPlan) -> Path:
    doc: dict[str, Any] = {
        "job": JOB,
        "provider": "gemini",
        "route": "batch",
        "batch": {"max_requests": plan.shard, "create_grace_s": plan.create_grace_s},
        "output": {"dir": str(path.parent / "out"), "filename": "{i}.png"},
        "tasks": [{"prompt": f"Batch chaos catalog photo number {i}", "i": str(i)} for i in range(plan.tasks)],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def cli_env(emu: GeminiProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINKMODEL_", "BATCHER_", "GEMINI_", "GOOGLE_"))}
    env.update(GEMINI_BASE_URL=emu.origin, GEMINI_API_KEY=API_KEY, PYTHONPATH=str(REPO))
    return env


class BatchDriver:
    """Starts the workers, kills and restarts them, runs `batcher cancel`; keeps each process's stderr."""

    def __init__(self, plan: BatchPlan, workdir: Path, emu: GeminiProcess, figures: BatchFigures) -> None:
        self.plan, self.workdir, self.emu, self.figures = plan, workdir, emu, figures
        self.manifest = write_manifest(workdir / "batch-chaos.yaml", plan)
        self.db = plan.pg_url or str(workdir / "chaos.db")
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = cli_env(emu)
        self.rng = random.Random(plan.seed)
        self.live: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}  # slot -> (process, its stderr)
        self.started = time.monotonic()

    def cli(self, *args: str, timeout: float) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of one CLI command."""
        done = subprocess.run([sys.executable, "-m", "batcher.cli", *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    def start_worker(self, slot: int) -> None:
        self.figures.workers_started += 1
        err_path = self.logs / f"work-{self.figures.workers_started:03d}.err"
        args = [sys.executable, "-m", "batcher.cli", "work", "--db", self.db, "-q"]
        with open(err_path, "wb") as err:  # the child keeps its own copy
            proc = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        self.live[slot] = (proc, err_path)

    def ended(self, slot: int, code: int, killed: bool) -> None:
        _, err_path = self.live.pop(slot)
        bump(self.figures.exit_codes, str(code))
        err = err_path.read_text(errors="replace")
        if "Traceback" in err:
            self.figures.problems.append(f"{err_path.name} wrote a traceback: {err[-600:]!r}")
        if killed and code != -signal.SIGKILL and code not in FINAL:
            self.figures.problems.append(f"{err_path.name}: SIGKILL gave exit {code}")
        if not killed and code not in FINAL:
            self.figures.problems.append(f"{err_path.name} exited {code}: {err[-300:]!r}")

    def reap(self) -> None:
        for slot, (proc, _) in list(self.live.items()):
            code = proc.poll()
            if code is not None:
                self.ended(slot, code, killed=False)

    def kill_one(self) -> tuple[float, int] | None:
        """SIGKILL a live worker; (the moment to start it again, its slot), or None when none was running."""
        if not self.live:
            return None
        slot = self.rng.choice(sorted(self.live))
        proc, _ = self.live[slot]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            self.figures.kills += 1
        code = proc.wait(30)
        self.ended(slot, code, killed=True)
        return time.monotonic() + self.rng.uniform(0.0, self.plan.restart_s), slot

    def cancel(self) -> None:
        self.figures.cancels += 1
        code, out, err = self.cli("cancel", JOB, "--db", self.db, timeout=CANCEL_TIMEOUT_S)
        out += err
        bump(self.figures.cancel_codes, str(code))
        (self.logs / f"cancel-{self.figures.cancels:03d}.log").write_text(out, encoding="utf-8")
        said = CANCELLED_SHARDS.search(out)
        self.figures.shards_cancelled += int(said.group(1)) if said else 0
        if "Traceback" in out:
            self.figures.problems.append(f"cancel {self.figures.cancels} wrote a traceback: {out[-600:]!r}")
        elif code != 0:
            self.figures.problems.append(f"cancel {self.figures.cancels} exited {code}: {out[-300:]!r}")

    def job_open(self) -> int:
        """Tasks of the job not in a final state, by its report."""
        report = report_json(self)
        head = report["summary"]
        return int(head["tasks"]) - int(head["succeeded"]) - int(head["failed"])

    def run(self) -> None:
        code, _, err = self.cli("import", str(self.manifest), "--db", self.db, timeout=120)
        if code != 0:
            raise RuntimeError(f"batcher import failed ({code}): {err}")
        self.started = time.monotonic()
        for slot in range(self.plan.workers):
            self.start_worker(slot)
        events = sorted([(self.rng.uniform(0.5, self.plan.horizon_s), "kill") for _ in range(self.plan.kills)]
                        + [(self.rng.uniform(0.5, self.plan.horizon_s), "cancel") for _ in range(self.plan.cancels)])  # fmt: skip
        restarts: list[tuple[float, int]] = []  # (when, slot)
        deadline = self.started + self.plan.run_timeout_s
        while (events or restarts or self.live) and time.monotonic() < deadline:
            now = time.monotonic()
            while events and self.started + events[0][0] <= now:
                _, kind = events.pop(0)
                if kind == "cancel":
                    self.cancel()
                    continue
                back = self.kill_one()
                if back is not None:
                    restarts.append(back)
            for when, slot in [r for r in restarts if r[0] <= time.monotonic()]:
                restarts.remove((when, slot))
                self.start_worker(slot)
            self.reap()
            time.sleep(POLL_S)
        finishing = 0
        while time.monotonic() < deadline and self.job_open() > 0:
            if finishing >= self.plan.max_finishing_runs:
                break
            finishing += 1
            self.start_worker(-finishing)
            while self.live and time.monotonic() < deadline:
                self.reap()
                time.sleep(POLL_S)
        if self.live:
            self.figures.problems.append(
                f"{len(self.live)} workers still running after {self.plan.run_timeout_s:.0f} s"
            )
        self.stop_all()
        if self.job_open() > 0:
            self.figures.problems.append(f"the job did not finish in {self.plan.run_timeout_s:.0f} s")

    def stop_all(self) -> None:
        """SIGKILL every worker still running (at the deadline, or when the driver itself fails)."""
        for slot, (proc, _) in list(self.live.items()):
            proc.kill()
            self.ended(slot, proc.wait(), killed=True)


def run_batch_chaos(plan: BatchPlan, workdir: Path, log: Callable[[str], None] | None = None) -> BatchFigures:
    """Run the whole plan in `workdir` and check the outcome; problems are listed, not raised."""
    figures = BatchFigures(tasks=plan.tasks, store="postgresql" if plan.pg_url else "sqlite")
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with GeminiProcess(plan) as emu:
        driver = BatchDriver(plan, workdir, emu, figures)
        if log is not None:
            log(f"emulator at {emu.origin}; {plan.tasks} tasks, {plan.workers} workers, {plan.kills} kills, "
                f"{plan.cancels} cancels, seed {plan.seed}, store {figures.store}")  # fmt: skip
        try:
            driver.run()
        finally:
            driver.stop_all()
        figures.wall_s = time.monotonic() - start
        emu.advance(SETTLE_S)  # every batch still alive at the API ends now, and bills what it finished
        stats = emu.stats()
        (workdir / "emulator-stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")  # post-mortem
        verify(report_json(driver), stats, figures, db=driver.db, out_dir=workdir / "out")
    return figures


def report_json(driver: BatchDriver) -> dict[str, Any]:
    code, out, err = driver.cli("report", JOB, "--db", driver.db, "--format", "json", timeout=120)
    if code != 0:
        raise RuntimeError(f"batcher report failed ({code}): {err}")
    result: dict[str, Any] = json.loads(out)
    return result


# --- a fresh PostgreSQL database for the store --------------------------------------------------------------


class FreshDatabase:
    """A new, empty database on the PostgreSQL server `admin_url` names, dropped on exit (kept with `keep`)."""

    def __init__(self, admin_url: str, keep: bool = False) -> None:
        self.admin = admin_url.replace("postgresql+asyncpg://", "postgresql://")
        self.name = f"batcher_chaos_{random.SystemRandom().getrandbits(48):012x}"
        self.keep = keep
        self.url = ""

    def __enter__(self) -> FreshDatabase:
        from sqlalchemy.engine import make_url

        asyncio.run(self._execute(f'CREATE DATABASE "{self.name}"'))
        self.url = make_url(self.admin).set(database=self.name).render_as_string(hide_password=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    async def _execute(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
