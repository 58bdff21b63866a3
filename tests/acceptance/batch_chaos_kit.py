"""Chaos for the batch route: several `batcher work` processes on one store, killed with SIGKILL and crossed by
`batcher cancel` at random moments, against a Gemini emulator in a process of its own playing what Google's
service does around a long batch (creates answered by a gateway after the batch was made, a listing that lags,
lines kept and billed by any ending, responses files partial, missing lines, gone or expired, failed batches,
slow get/list/cancel), each at a small rate. Then every guarantee is checked against the emulator's own billing.

One copy serves `bench/chaos.py --route batch` (full size, prints the figures) and
`tests/acceptance/test_batch_chaos.py` (CI size). Synchronous on purpose: everything it drives is another
process. After the last worker the emulator's clock is moved three days on, so every batch still alive at the
API (one a client leaked) ends and bills before its counts are read.

What is checked (each failure becomes one line in `BatchFigures.problems`):
- every task reached a final state; a failed one only for a cause the faults can give;
- every succeeded task's file exists, is a whole PNG, matches its recorded sha256 and is byte for byte the image
  the emulator billed for its key; every key the emulator billed is a succeeded task or one the summary counts
  as paid with its result lost (or unusable);
- money per key: no key billed more often than the ledger knows, unless its task is marked a possible double
  charge, and no task billed in the ledger whose key the API never billed; per batch: every batch that billed lines is one the store knows, unless its tasks are so marked;
- money in total: the ledger's billed calls lie between the emulator's billed lines minus the unknown
  submissions and the emulator's billed lines (equal when there were none), and its cost is the batch price times
  its batch calls;
- no process wrote a traceback; each killed worker died of its SIGKILL; each cancel exited 0; every other worker
  exited 0 or 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from tests.acceptance.chaos_kit import EmulatorProcess, png_problem

REPO = Path(__file__).resolve().parents[2]
MODEL = "gemini-3.1-flash-lite-image"
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
    "batch_fail_rate": "0.03",  # ends FAILED midway, keeping what it finished
    "batch_ended_no_file_rate": "0.2",  # such an ending with no responses file at all
    "batch_omit_line_rate": "0.01",  # a billed line left out of its responses file
    "batch_results_no_final_newline": "true",
    "batch_line_fail_rate": "0.01",  # a line answered with an error Status (not billed)
    "results_gone_rate": "0.02",  # a responses file gone as soon as it is made (403)
}
FINAL = (0, 1)  # exit codes of a worker that drove every task it could to a final state (1: some failed)
# Failures the faults can give, and whether the task was billed: paid with its result lost (a gone file, a
# billed line left out of its file), paid but unusable, or a line failed as often as the attempts allow.
ALLOWED_FAILURES = ("result_lost", "download", "generation")
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
    faults: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_BATCH_FAULTS))
    horizon_s: float = 60.0
    restart_s: float = 3.0
    pg_url: str | None = None  # a PostgreSQL database URL for the store; None: SQLite in the workdir
    max_finishing_runs: int = 6  # workers started after the last event to finish the job, one at a time
    run_timeout_s: float = 900.0


@dataclass
class BatchFigures:
    """What happened and what was found."""

    tasks: int = 0
    store: str = "sqlite"
    workers_started: int = 0
    kills: int = 0
    cancels: int = 0
    cancel_codes: dict[str, int] = field(default_factory=dict)
    shards_cancelled: int = 0  # as the cancels said ("cancelled N batch shards")
    exit_codes: dict[str, int] = field(default_factory=dict)  # of every worker
    succeeded: int = 0
    failed_by_cause: dict[str, int] = field(default_factory=dict)
    files_verified: int = 0
    other_files: int = 0  # files in the output directory that no task names (e.g. known duplicates' images)
    batches_created: int = 0  # by the emulator's count
    batches_by_state: dict[str, int] = field(default_factory=dict)
    batches_unknown_to_store: int = 0  # batches that billed lines and that the store never named
    gateway_errors: int = 0
    lines_omitted: int = 0
    results_gone: int = 0
    expired_answers: int = 0
    emulator_lines_billed: int = 0
    emulator_online_billed: int = 0
    keys_billed_twice: int = 0  # keys the emulator billed more than once
    emulator_cost_usd: Decimal = Decimal(0)
    ledger_billed_calls: int = 0
    ledger_batch_billed: int = 0
    ledger_cost_usd: Decimal = Decimal(0)
    paid_result_lost: int = 0
    paid_unusable: int = 0
    known_duplicates: int = 0
    unknown_submissions: int = 0
    possible_double_charges: int = 0  # tasks the report marks
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("store", self.store),
            ("workers started", f"{self.workers_started} (exit codes: {_counts(self.exit_codes)})"),
            ("SIGKILLs", str(self.kills)),
            ("cancels", f"{self.cancels} (exit codes: {_counts(self.cancel_codes)}; {self.shards_cancelled} shards cancelled)"),
            ("tasks", str(self.tasks)),
            ("succeeded", str(self.succeeded)),
            ("failed by cause", _counts(self.failed_by_cause) or "none"),
            ("files verified (PNG, sha256, the API's bytes)", str(self.files_verified)),
            ("other files in the output directory", str(self.other_files)),
            ("batches created (emulator)", str(self.batches_created)),
            ("batches by end (emulator)", _counts(self.batches_by_state)),
            ("batches billed, unknown to the store", str(self.batches_unknown_to_store)),
            ("creates answered by a gateway", str(self.gateway_errors)),
            ("billed lines left out of a file", str(self.lines_omitted)),
            ("responses files gone / expired answers", f"{self.results_gone} / {self.expired_answers}"),
            ("lines billed (emulator)", f"{self.emulator_lines_billed} (+ {self.emulator_online_billed} online)"),
            ("keys billed more than once (emulator)", str(self.keys_billed_twice)),
            ("billed calls (ledger)", f"{self.ledger_billed_calls} ({self.ledger_batch_billed} by batch)"),
            ("cost: ledger / emulator", f"${self.ledger_cost_usd} / ${self.emulator_cost_usd}"),
            ("paid, result lost", str(self.paid_result_lost)),
            ("paid, unusable", str(self.paid_unusable)),
            ("known duplicates", str(self.known_duplicates)),
            ("unknown submissions", f"{self.unknown_submissions} ({self.possible_double_charges} tasks marked)"),
            ("billed minus ledger", f"{self.emulator_lines_billed + self.emulator_online_billed - self.ledger_billed_calls}"),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("checks", "all passed" if not self.problems else f"{len(self.problems)} FAILED"),
        ]  # fmt: skip
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"  FAILED: {p}" for p in self.problems]
        return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


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
        "batch": {"max_requests": plan.shard},
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
        _bump(self.figures.exit_codes, str(code))
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
        _bump(self.figures.cancel_codes, str(code))
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
        verify(driver, stats, figures)
    return figures


# --- the checks ---------------------------------------------------------------------------------------


def report_json(driver: BatchDriver) -> dict[str, Any]:
    code, out, err = driver.cli("report", JOB, "--db", driver.db, "--format", "json", timeout=120)
    if code != 0:
        raise RuntimeError(f"batcher report failed ({code}): {err}")
    result: dict[str, Any] = json.loads(out)
    return result


def known_batches(db: str) -> set[str]:
    """The remote names (batches/...) the store recorded for its shards (its tasks name theirs too)."""
    sql = "SELECT remote_name FROM submissions WHERE remote_name IS NOT NULL"
    if db.startswith("postgresql"):
        return asyncio.run(_pg_names(db, sql))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        names = {str(r[0]) for r in conn.execute(sql)}
    conn.close()
    return names


async def _pg_names(url: str, sql: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return {str(r[0]) for r in await conn.fetch(sql)}
    finally:
        await conn.close()


def verify(driver: BatchDriver, stats: Mapping[str, Any], f: BatchFigures) -> None:
    problems = f.problems
    report = report_json(driver)
    head, tasks = report["summary"], report["tasks"]
    by_key: dict[str, dict[str, Any]] = {t["key"]: t for t in tasks}
    billed: dict[str, int] = stats["batch_lines_by_key"]
    shas: dict[str, str] = stats["image_sha256_by_key"]

    # every task final, failed only for a cause the faults give
    f.succeeded = sum(t["status"] == "succeeded" for t in tasks)
    for t in tasks:
        if t["status"] == "failed":
            _bump(f.failed_by_cause, str(t.get("failure")))
    open_tasks = [t for t in tasks if t["status"] not in ("succeeded", "failed")]
    if len(tasks) != driver.plan.tasks or open_tasks:
        states: dict[str, int] = {}
        for t in open_tasks:
            _bump(states, t["status"])
        problems.append(f"{len(open_tasks)} of {len(tasks)} tasks not final ({_counts(states)})")
    odd = {c: n for c, n in f.failed_by_cause.items() if c not in ALLOWED_FAILURES}
    if odd:
        problems.append(f"tasks failed for causes no fault of the plan gives: {_counts(odd)}")

    # every file present and the API's bytes; every billed key a result or counted as paid and lost
    named: set[Path] = set()
    for t in tasks:
        if t["status"] != "succeeded":
            continue
        path = Path(t["file"] or "")
        named.add(path.resolve())
        if not path.is_file():
            problems.append(f"task {t['task']}: {path} is missing")
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        why = png_problem(data)
        if why is None and digest != t["sha256"]:
            why = "sha256 differs from the record"
        if why is None and shas.get(t["key"]) != digest:
            why = "not the image the API billed for its key" if t["key"] in shas else "the API never billed its key"
        if why is not None:
            problems.append(f"task {t['task']}: {path}: {why}")
        else:
            f.files_verified += 1
    out_dir = driver.workdir / "out"
    f.other_files = (
        sum(1 for p in out_dir.rglob("*") if p.is_file() and p.resolve() not in named) if out_dir.exists() else 0
    )
    f.paid_result_lost = int(head["paid_result_lost"])
    f.paid_unusable = int(head["paid_unusable"])
    paid_failed = [t for t in tasks if t["status"] == "failed" and t.get("failure") in ("result_lost", "download")]
    if len(paid_failed) != f.paid_result_lost + f.paid_unusable:
        problems.append(f"{len(paid_failed)} tasks failed paid; the summary counts {f.paid_result_lost} result lost "
                        f"and {f.paid_unusable} unusable")  # fmt: skip
    unaccounted = [k for k in billed if k in by_key and by_key[k]["status"] != "succeeded"
                   and by_key[k].get("failure") not in ("result_lost", "download")]  # fmt: skip
    if unaccounted:
        problems.append(f"{len(unaccounted)} keys billed by the API are neither a result nor counted as paid and "
                        f"lost (e.g. task {by_key[unaccounted[0]]['task']}: {by_key[unaccounted[0]]['status']}, "
                        f"{by_key[unaccounted[0]].get('failure')})")  # fmt: skip
    foreign = sorted(set(billed) - set(by_key))
    if foreign:
        problems.append(f"the API billed {len(foreign)} keys that are no task of the job")

    # money per key and per batch, against the emulator's own billing
    f.possible_double_charges = sum(bool(t.get("possible_double_charge")) for t in tasks)
    f.keys_billed_twice = sum(n > 1 for n in billed.values())
    f.known_duplicates = int(head["known_duplicates"])
    extra_billed = sum(n - 1 for n in billed.values() if n > 1)
    unflagged = [k for k, n in billed.items() if n > 1 and k in by_key and not by_key[k].get("possible_double_charge")]
    if extra_billed > f.known_duplicates and unflagged:
        problems.append(f"{extra_billed} lines billed again ({f.keys_billed_twice} keys), {f.known_duplicates} known "
                        f"duplicates in the ledger; {len(unflagged)} of those keys are not marked a possible double "
                        f"charge (e.g. task {by_key[unflagged[0]]['task']})")  # fmt: skip
    ledger_paid = [t for t in tasks if Decimal(t.get("cost_usd") or 0) > 0]
    never_billed = [t for t in ledger_paid if billed.get(t["key"], 0) == 0]
    if never_billed:
        problems.append(f"the ledger bills {len(never_billed)} tasks whose key the API never billed (e.g. task "
                        f"{never_billed[0]['task']}: {never_billed[0]['status']}, {never_billed[0].get('failure')})")  # fmt: skip
    names = known_batches(driver.db) | {str(t["remote_task_id"]) for t in tasks if t.get("remote_task_id")}
    f.batches_created = int(stats["batches_created"])
    f.batches_by_state = {k.removeprefix("BATCH_STATE_"): v for k, v in stats["batches_by_state"].items()}
    unknown_batches = {b: keys for b, keys in stats["billed_keys_by_batch"].items() if b not in names}
    f.batches_unknown_to_store = len(unknown_batches)
    silent = {b: keys for b, keys in unknown_batches.items()
              if not all(by_key.get(k, {}).get("possible_double_charge") for k in keys)}  # fmt: skip
    if silent:
        lines = sum(len(k) for k in silent.values())
        problems.append(f"{len(silent)} batches billed {lines} lines the store never knew, their tasks not marked "
                        f"(e.g. {next(iter(silent))})")  # fmt: skip

    # money in total
    f.gateway_errors = int(stats["batch_create_gateway_errors"])
    f.lines_omitted = int(stats["batch_lines_omitted"])
    f.results_gone = int(stats["results_files_gone"])
    f.expired_answers = int(stats["expired_file_answers"])
    f.emulator_lines_billed = int(stats["batch_lines_billed"])
    f.emulator_online_billed = int(stats["images_billed"])
    f.emulator_cost_usd = Decimal(stats["cost_usd"])
    f.ledger_billed_calls = int(head["billed_calls"])
    f.ledger_batch_billed = int(head.get("batch_billed", 0))
    f.ledger_cost_usd = Decimal(head["cost_usd"])
    f.unknown_submissions = int(head["unknown_submissions"])
    emulator_billed = f.emulator_lines_billed + f.emulator_online_billed
    if not emulator_billed - f.unknown_submissions <= f.ledger_billed_calls <= emulator_billed:
        problems.append(f"the API billed {emulator_billed} lines ({f.emulator_lines_billed} by batch), the ledger "
                        f"{f.ledger_billed_calls}: a difference of {emulator_billed - f.ledger_billed_calls} with "
                        f"{f.unknown_submissions} unknown submissions flagged")  # fmt: skip
    batch_price = Decimal(head["batch_unit_price_usd"][MODEL])
    online_price = Decimal(head["unit_price_usd"][MODEL])
    expected_cost = f.ledger_batch_billed * batch_price + (f.ledger_billed_calls - f.ledger_batch_billed) * online_price
    if f.ledger_cost_usd != expected_cost:
        problems.append(f"ledger cost ${f.ledger_cost_usd} is not {f.ledger_batch_billed} x ${batch_price} + "
                        f"{f.ledger_billed_calls - f.ledger_batch_billed} x ${online_price}")  # fmt: skip
    if f.unknown_submissions == 0 and f.ledger_cost_usd != f.emulator_cost_usd:
        problems.append(f"ledger cost ${f.ledger_cost_usd}, the API billed ${f.emulator_cost_usd}")


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
