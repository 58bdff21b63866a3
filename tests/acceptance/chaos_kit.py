"""Chaos: the real `batcher run` interrupted at random moments against an emulator in a process of its own,
restarted until it finishes, then checked against the emulator's own accounting.

One copy serves both `bench/chaos.py` (full size, prints the figures) and `tests/acceptance/test_chaos.py`
(CI size). Synchronous on purpose: everything it drives is another process.

What is checked after the last run (each failure becomes one line in `Figures.problems`):
- every task succeeded, and the report says so, except those the faults made unusable after billing them (a
  file that is not an image; a result the API forgot before it was saved), which fail as paid but unusable;
- every file exists, is a whole PNG (every chunk's CRC, IDAT inflates, IEND last) and matches its recorded sha256
  and size; nothing else is in the output directory but the hidden `.part` file of a download a SIGKILL cut
  (at most one per SIGKILL: a killed process cannot clean up; a SIGINT/SIGTERM stop must leave none);
- by the emulator's count, no prompt was created more often than 1 + its failed generations + its unknown
  submissions, and the report marks every task with an unknown submission as a possible double charge;
- the ledger's cost is its billed calls times the unit price; its billed calls are the succeeded tasks plus the
  paid-but-unusable ones and the known duplicates; and the emulator's successes lie between the ledger's billed
  calls and those plus the unknown submissions (equal when there were none);
- no run wrote a traceback, and every interrupted run exited as its signal promises (130 for SIGINT/SIGTERM).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"emulator ready base_url=(\S+) api_key=(\S+)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL = "gemini-3.1-flash-lite-image"
API_KEY = "chaos-key-0d7c"  # the emulator's key for the run (not a secret)

# Small fault rates of every kind a long run meets in the field.
DEFAULT_FAULTS: dict[str, float] = {
    "error_503_rate": 0.02,
    "drop_rate": 0.01,
    "lost_create_rate": 0.01,
    "truncate_rate": 0.01,
    "fail_rate": 0.01,
    "accepted_error_rate": 0.01,  # accepted, then 502/504 from the gateway: an unknown submission
    "not_image_rate": 0.005,  # a download serves an error page: billed, paid but unusable
    "forget_rate": 0.02,  # forgotten once its Success was reported: with a cut download, paid, result lost
}
BILLED_UNUSABLE = ("download", "result_lost")
FINAL = (
    0,
    1,
)  # exit codes of a run that drove every task to a final state (1: some failed for good)  # failures the faults above may cause, billed all the same
POLL_S = 0.02  # how often the driver reads the emulator's counters while waiting for a moment, seconds
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 60.0  # a SIGINT/SIGTERM stop waits for creates on the wire (worker.STOP_GRACE_S is 15 s)


@dataclass(frozen=True)
class Plan:
    """One chaos run. Interruptions land at moments drawn uniformly over the job's progress (files served so
    far), each a further uniform 0..jitter_s later, so they hit creates, polls, downloads and commits alike."""

    tasks: int = 500
    kills: int = 20
    seed: int = 0
    latency: tuple[float, float] = (0.3, 2.0)  # uniform generation time, seconds
    faults: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FAULTS))
    signals: tuple[signal.Signals, ...] = (signal.SIGKILL,)  # each interruption picks one of these
    jitter_s: float = 0.5
    max_in_flight: int | None = None  # None: the CLI's default
    max_finishing_runs: int = 10  # uninterrupted runs allowed to finish the job after the last interruption
    run_timeout_s: float = 600.0


@dataclass
class Figures:
    """What happened and what was found."""

    tasks: int = 0
    kills: int = 0  # interruptions sent to a running CLI
    signals: dict[str, int] = field(default_factory=dict)  # by signal name
    runs: int = 0  # CLI processes started
    restarts: int = 0  # runs started after an interruption
    exit_codes: dict[str, int] = field(default_factory=dict)  # of every run
    succeeded: int = 0
    paid_unusable: int = 0  # billed, failed: not an image, or the result lost before it was saved
    lost_at_api: int = 0  # failed unbilled: the API forgot the task before the run saw its Success (possibly billed)
    known_duplicates: int = 0
    files_verified: int = 0
    prompts_created_twice: int = 0  # prompts the emulator accepted more than once
    extra_creates: int = 0  # creates beyond one per prompt
    failed_generations: int = 0
    unknown_submissions: int = 0
    possible_double_charges: int = 0  # tasks the report marks
    partial_files_left: int = 0  # hidden .part files of downloads cut by SIGKILL
    billed_calls: int = 0
    emulator_creates: int = 0
    emulator_successes: int = 0
    ledger_cost_usd: Decimal = Decimal(0)
    unit_price_usd: Decimal = Decimal(0)
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def unusable(self) -> int:
        """Tasks the plan's faults left failed: paid but unusable, or lost at the API."""
        return self.paid_unusable + self.lost_at_api

    @property
    def successes_cost_usd(self) -> Decimal:
        return self.emulator_successes * self.unit_price_usd

    def table(self) -> str:
        price = self.unit_price_usd
        rows = [
            ("interruptions", f"{self.kills} ({', '.join(f'{k} {v}' for k, v in sorted(self.signals.items()))})"),
            ("CLI runs (restarts)", f"{self.runs} ({self.restarts})"),
            ("exit codes", ", ".join(f"{k}: {v}" for k, v in sorted(self.exit_codes.items()))),
            ("tasks", str(self.tasks)),
            ("succeeded", str(self.succeeded)),
            ("paid but unusable (failed)", str(self.paid_unusable)),
            ("lost at the API (failed)", str(self.lost_at_api)),
            ("known duplicates", str(self.known_duplicates)),
            ("files verified (PNG + sha256)", str(self.files_verified)),
            ("partial files left by SIGKILL", str(self.partial_files_left)),
            ("prompts created twice", f"{self.prompts_created_twice} ({self.extra_creates} extra creates)"),
            ("failed generations (retried)", str(self.failed_generations)),
            ("unknown submissions", f"{self.unknown_submissions} ({self.possible_double_charges} tasks marked)"),
            ("billed calls (ledger)", str(self.billed_calls)),
            ("emulator creates accepted", str(self.emulator_creates)),
            ("emulator successes", str(self.emulator_successes)),
            ("ledger cost", f"${self.ledger_cost_usd} = {self.billed_calls} x ${price}"),
            ("emulator successes x price", f"${self.successes_cost_usd} (difference {self.emulator_successes - self.billed_calls} <= unknown {self.unknown_submissions} + lost {self.lost_at_api})"),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("checks", "all passed" if not self.problems else f"{len(self.problems)} FAILED"),
        ]  # fmt: skip
        return figures_table(rows, self.problems)


# --- the emulator in a process of its own ---------------------------------------------------------------


class EmulatorProcess:
    """`python -m batcher.emulator --port 0 ...`; its counters are read over HTTP."""

    def __init__(self, plan: Plan, api_key: str = API_KEY) -> None:
        lo, hi = plan.latency
        self.args = [sys.executable, "-m", "batcher.emulator", "--port", "0", "--seed", str(plan.seed),
                     "--latency", f"uniform:{lo}:{hi}", "--api-key", api_key]  # fmt: skip
        for knob, rate in plan.faults.items():
            self.args += ["--" + knob.replace("_", "-"), str(rate)]
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.api_key = api_key

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the emulator prints its ready line first, then nothing more
        found = READY.search(line)
        if found is None:
            self.close()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.base_url = found.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    @property
    def origin(self) -> str:
        return self.base_url.split("/api/", 1)[0]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.origin}/_emulator/stats?events=0", timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result


def requests_seen(stats: Mapping[str, Any]) -> int:
    return sum(n for by_status in stats["requests"].values() for n in by_status.values())


# --- the job ------------------------------------------------------------------------------------------


def write_manifest(path: Path, tasks: int) -> Path:
    doc: dict[str, Any] = {
        "job": path.stem,
        "output": {"dir": str(path.parent / "out" / path.stem), "filename": "{i}.png"},
        "tasks": [{"prompt": f"Chaos catalog photo number {i}", "i": str(i)} for i in range(tasks)],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def cli_env(emu: EmulatorProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINKMODEL_", "BATCHER_"))}
    env.update(LINKMODEL_BASE_URL=emu.base_url, LINKMODEL_API_KEY=emu.api_key, PYTHONPATH=str(REPO))
    return env


class Driver:
    """Starts, interrupts and restarts the CLI; keeps each run's stderr in `logs/`."""

    def __init__(self, plan: Plan, workdir: Path, emu: EmulatorProcess, figures: Figures) -> None:
        self.plan, self.workdir, self.emu, self.figures = plan, workdir, emu, figures
        self.manifest = write_manifest(workdir / "chaos.yaml", plan.tasks)
        self.db = workdir / "chaos.db"
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = cli_env(emu)
        self.rng = random.Random(plan.seed)

    def start(self) -> subprocess.Popen[bytes]:
        self.figures.runs += 1
        args = [sys.executable, "-m", "batcher.cli", "run", str(self.manifest), "--db", str(self.db), "-q"]
        if self.plan.max_in_flight is not None:
            args += ["--max-in-flight", str(self.plan.max_in_flight)]
        with open(self.logs / f"run-{self.figures.runs:03d}.err", "wb") as err:  # the child keeps its own copy
            return subprocess.Popen(args, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

    def finish(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.figures.problems.append(f"run {self.figures.runs} ({what}) did not end within {timeout:.0f} s")
            code = -9
        self.figures.exit_codes[str(code)] = self.figures.exit_codes.get(str(code), 0) + 1
        err = (self.logs / f"run-{self.figures.runs:03d}.err").read_text(errors="replace")
        if "Traceback" in err:
            self.figures.problems.append(f"run {self.figures.runs} ({what}) wrote a traceback: {err[-600:]!r}")
        return code

    def wait_for_moment(self, proc: subprocess.Popen[bytes], mark: float, requests_before: int, graceful: bool) -> bool:
        """Block until `mark` files were served (and, for a graceful signal, this run has sent a request);
        False when the run ended by itself first."""
        deadline = time.monotonic() + self.plan.run_timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            stats = self.emu.stats()
            if stats["downloads"] >= mark and (not graceful or requests_seen(stats) > requests_before):
                return True
            time.sleep(POLL_S)
        return proc.poll() is None

    def interrupt(self, mark: float) -> bool:
        """One run, interrupted at the moment `mark` gives; True when the job finished before it."""
        sig = self.rng.choice(self.plan.signals)
        graceful = sig != signal.SIGKILL
        requests_before = requests_seen(self.emu.stats())
        proc = self.start()
        if not self.wait_for_moment(proc, mark, requests_before, graceful):
            return self.finish(proc, STOP_TIMEOUT_S, "ended before its interruption") in FINAL
        time.sleep(self.rng.uniform(0.0, self.plan.jitter_s))
        if proc.poll() is not None:
            return self.finish(proc, STOP_TIMEOUT_S, "ended before its interruption") in FINAL
        proc.send_signal(sig)
        self.figures.kills += 1
        self.figures.signals[sig.name] = self.figures.signals.get(sig.name, 0) + 1
        code = self.finish(proc, STOP_TIMEOUT_S, sig.name)
        expected = -signal.SIGKILL if sig == signal.SIGKILL else 130
        if code not in (expected, *FINAL):  # it finished the job just as the signal came
            self.figures.problems.append(f"run {self.figures.runs}: {sig.name} gave exit {code}, not {expected}")
        return code in FINAL

    def run(self) -> None:
        marks = sorted(self.rng.uniform(0, 0.9 * self.plan.tasks) for _ in range(self.plan.kills))
        done = False
        for mark in marks:
            if self.figures.runs:
                self.figures.restarts += 1
            done = self.interrupt(mark)
            if done:
                break
        finishing = 0
        while not done:
            if finishing >= self.plan.max_finishing_runs:
                self.figures.problems.append(f"the job did not finish in {finishing} uninterrupted runs")
                return
            finishing += 1
            self.figures.restarts += self.figures.runs > 0
            done = self.finish(self.start(), self.plan.run_timeout_s, "finishing run") in FINAL


def run_chaos(plan: Plan, workdir: Path, log: Callable[[str], None] | None = None) -> Figures:
    """Run the whole plan in `workdir` and check the outcome; problems are listed, not raised."""
    figures = Figures(tasks=plan.tasks)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with EmulatorProcess(plan) as emu:
        driver = Driver(plan, workdir, emu, figures)
        if log is not None:
            log(f"emulator at {emu.base_url}; {plan.tasks} tasks, {plan.kills} interruptions, seed {plan.seed}")
        driver.run()
        figures.wall_s = time.monotonic() - start
        # generations still running (e.g. created by a request whose reply was lost) finish, then are counted
        time.sleep(plan.latency[1] + 0.2)
        stats = emu.stats()
    verify(driver, stats, figures)
    return figures


# --- the checks ---------------------------------------------------------------------------------------


def png_problem(data: bytes) -> str | None:
    """Why `data` is not one whole PNG, or None: signature, every chunk's CRC, IHDR first, IEND last, no
    trailing bytes, and the IDAT stream inflating to exactly the rows the header promises."""
    if not data.startswith(PNG_SIGNATURE):
        return "no PNG signature"
    offset, kinds, idat, header = 8, [], [], b""
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        crc = data[offset + 8 + length : offset + 12 + length]
        if len(body) != length or len(crc) != 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            return f"chunk {kind!r} is cut short or has a bad CRC"
        kinds.append(kind)
        header = body if kind == b"IHDR" else header
        if kind == b"IDAT":
            idat.append(body)
        offset += 12 + length
    if offset != len(data) or not kinds or kinds[0] != b"IHDR" or kinds[-1] != b"IEND":
        return "chunks out of order or bytes after IEND"
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 0)
    try:
        pixels = zlib.decompress(b"".join(idat))
    except zlib.error:
        return "IDAT does not inflate"
    if len(pixels) != height * (1 + (width * depth * channels + 7) // 8):
        return "IDAT does not hold the rows IHDR promises"
    return None


def report_json(driver: Driver) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "batcher.cli", "report", "--db", str(driver.db), "--format",
                           "json"], cwd=driver.workdir, env=driver.env, capture_output=True, text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"batcher report failed ({done.returncode}): {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def verify(driver: Driver, stats: Mapping[str, Any], f: Figures) -> None:
    problems = f.problems
    report = report_json(driver)
    head, report_rows = report["summary"], {r["key"]: r for r in report["tasks"]}
    with sqlite3.connect(f"file:{driver.db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT key, prompt, status, output_path, sha256, bytes, cost_micros, gen_failures, unknown_count, "
            "failure FROM tasks ORDER BY seq"
        ).fetchall()
        # a reply that came after a takeover keeps its image beside its task's, as a paid duplicate
        duplicates = [Path(r[0]).resolve() for r in conn.execute("SELECT output_path FROM strays") if r[0]]
    conn.close()

    # every task succeeded, but for those the faults made unusable after billing them
    f.succeeded = sum(r["status"] == "succeeded" for r in rows)
    f.paid_unusable = sum(r["status"] == "failed" and r["failure"] in BILLED_UNUSABLE for r in rows)
    # A Success whose reply was cut (a dropped connection, a kill) and then forgotten by the API (forget_rate)
    # can only end as lost at the API; allowed only where the emulator says it answered 404 for that very task.
    forgotten: dict[str, int] = stats["forgotten_by_prompt"]
    lost = [r for r in rows if r["status"] == "failed" and r["failure"] == "lost" and r["cost_micros"] == 0]
    forgotten_keys = {r["key"] for r in lost if forgotten.get(r["prompt"], 0) > 0}
    f.lost_at_api = len(forgotten_keys)
    done = f.succeeded + f.unusable
    if len(rows) != driver.plan.tasks or done != len(rows) or head["succeeded"] != f.succeeded:
        problems.append(f"{f.succeeded} of {len(rows)} tasks succeeded and {f.paid_unusable} were paid but unusable "
                        f"(report: {head['succeeded']} succeeded), {driver.plan.tasks} expected")  # fmt: skip
    for r in rows:
        if r["status"] == "failed" and r["cost_micros"] == 0 and r["key"] not in forgotten_keys:
            problems.append(f"task {r['key'][:12]} failed unbilled ({r['failure']}): not a fault of the plan")

    # every file whole, matching its record, and nothing else in the output directory
    expected: set[Path] = set(duplicates)
    for r in rows:
        if r["output_path"] is None:
            continue
        path = Path(r["output_path"])
        expected.add(path.resolve())
        if not path.is_file():
            problems.append(f"task {r['key'][:12]}: {path} is missing")
            continue
        data = path.read_bytes()
        why = png_problem(data)
        if why is None and hashlib.sha256(data).hexdigest() != r["sha256"]:
            why = "sha256 differs from the record"
        if why is None and len(data) != r["bytes"]:
            why = "size differs from the record"
        if why is not None:
            problems.append(f"task {r['key'][:12]}: {path}: {why}")
        else:
            f.files_verified += 1
    out_dir = driver.workdir / "out"
    stray = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.resolve() not in expected)
    # a process killed with SIGKILL mid-download cannot remove its hidden partial file; nothing else may stay
    partial = [p for p in stray if p.name.startswith(".") and p.name.endswith(".part")]
    f.partial_files_left = len(partial)
    if len(partial) > f.signals.get("SIGKILL", 0):
        problems.append(f"{len(partial)} partial files left with {f.signals.get('SIGKILL', 0)} SIGKILLs: {partial[:3]}")
    if len(stray) > len(partial):
        problems.append(f"{len(stray) - len(partial)} stray files in the output directory: {stray[:3]}")

    # nothing created twice outside a failed generation or the unknown window
    accepted: dict[str, int] = stats["accepted_by_prompt"]
    prompts = {r["prompt"] for r in rows}
    for r in rows:
        n = accepted.get(r["prompt"], 0)
        allowed = 1 + r["gen_failures"] + r["unknown_count"]
        if n > allowed:
            problems.append(f"prompt {r['prompt']!r} was created {n} times; allowed {allowed} "
                            f"({r['gen_failures']} failed generations, {r['unknown_count']} unknown)")  # fmt: skip
        if n == 0 and r["status"] == "succeeded":
            problems.append(f"prompt {r['prompt']!r} succeeded without the emulator accepting it")
        marked = bool(report_rows.get(r["key"], {}).get("possible_double_charge"))
        if marked != (r["unknown_count"] > 0):
            problems.append(f"task {r['key'][:12]}: report marks possible_double_charge={marked}, "
                            f"unknown_count={r['unknown_count']}")  # fmt: skip
    if set(accepted) - prompts:
        problems.append(f"the emulator accepted prompts outside the manifest: {sorted(set(accepted) - prompts)[:3]}")
    f.prompts_created_twice = sum(n > 1 for n in accepted.values())
    f.extra_creates = sum(n - 1 for n in accepted.values() if n > 1)
    f.failed_generations = sum(r["gen_failures"] for r in rows)
    f.unknown_submissions = int(head["unknown_submissions"])
    f.possible_double_charges = sum(bool(r.get("possible_double_charge")) for r in report_rows.values())
    if f.unknown_submissions != sum(r["unknown_count"] for r in rows):
        problems.append("the report's unknown submissions differ from the store's")

    # money: the ledger against the emulator's own accounting
    f.billed_calls = int(head["billed_calls"])
    f.unit_price_usd = Decimal(head["unit_price_usd"][MODEL])
    f.ledger_cost_usd = Decimal(head["cost_usd"])
    f.emulator_creates = int(stats["creates_accepted"])
    f.emulator_successes = int(stats["successes"])
    if f.ledger_cost_usd != f.billed_calls * f.unit_price_usd:
        problems.append(f"ledger cost ${f.ledger_cost_usd} is not {f.billed_calls} x ${f.unit_price_usd}")
    f.known_duplicates = int(head["known_duplicates"])
    billed_tasks = sum(r["cost_micros"] > 0 for r in rows)
    if f.billed_calls != billed_tasks + f.known_duplicates or billed_tasks != f.succeeded + f.paid_unusable:
        problems.append(f"{f.billed_calls} billed calls for {f.succeeded} succeeded tasks, {f.paid_unusable} paid but "
                        f"unusable and {f.known_duplicates} known duplicates")  # fmt: skip
    if int(head["paid_unusable"]) + int(head["paid_result_lost"]) != f.paid_unusable:
        problems.append("the report's paid-but-unusable counts differ from the store's")
    if int(head["lost_at_api"]) != len(lost):
        problems.append(f"the report counts {head['lost_at_api']} tasks lost at the API; the store {len(lost)}")
    possibly_billed = f.unknown_submissions + f.lost_at_api
    if not f.billed_calls <= f.emulator_successes <= f.billed_calls + possibly_billed:
        problems.append(f"the emulator counted {f.emulator_successes} successes; the ledger billed {f.billed_calls} "
                        f"with {f.unknown_submissions} unknown submissions and {f.lost_at_api} lost at the API")  # fmt: skip


def figures_table(rows: list[tuple[str, str]], problems: list[str]) -> str:
    """A chaos run's figures, one aligned line each, then each failed check."""
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{k.ljust(width)}  {v}" for k, v in rows] + [f"  FAILED: {p}" for p in problems])
