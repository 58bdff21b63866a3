"""The checks of the batch route's chaos run (batch_chaos_kit.py) and the figures it prints, against the
emulator's own billing.

What is checked (each failure becomes one line in `BatchFigures.problems`):
- every task reached a final state; a failed one only for a cause the faults can give;
- every succeeded task's file exists, is a whole PNG, matches its recorded sha256 and is byte for byte the image
  the emulator billed for its key; every key the emulator billed is a succeeded task or one the summary counts
  as paid with its result lost (or unusable);
- money per key: no key billed more often than the ledger knows, unless its task is marked a possible double
  charge, and no task billed in the ledger whose key the API never billed (but in a batch that ended with no
  responses file, which bills a number of lines without naming them);
- money per batch: every batch that billed lines is one the store knows, unless its tasks are so marked;
- money in total: the ledger's billed calls lie between the emulator's billed lines minus the unknown
  submissions and the emulator's billed lines (equal when there were none), and its cost is the batch price times
  its batch calls;
- no process wrote a traceback; each killed worker died of its SIGKILL; each cancel exited 0; every other worker
  exited 0 or 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.acceptance.chaos_kit import figures_table, png_problem

MODEL = "gemini-3.1-flash-lite-image"
# Failures the faults can give, and whether the task was billed: paid with its result lost (a gone file, a
# billed line left out of its file), paid but unusable, or a line failed as often as the attempts allow.
ALLOWED_FAILURES = ("result_lost", "download", "generation")


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
    local_shard_files: int = 0  # of those, shard input files (.jsonl) left behind
    files_uploaded: int = 0  # batch input files uploaded, by the emulator's count
    files_deleted: int = 0  # files the client deleted (inputs and responses)
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
            ("other files in the output directory", f"{self.other_files} ({self.local_shard_files} shard .jsonl)"),
            ("files uploaded / deleted (emulator)", f"{self.files_uploaded} / {self.files_deleted}"),
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
        return figures_table(rows, self.problems)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def bump(counts: dict[str, int], key: str) -> None:
    """Count one more of `key`."""
    counts[key] = counts.get(key, 0) + 1


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


def verify(report: Mapping[str, Any], stats: Mapping[str, Any], f: BatchFigures, *, db: str, out_dir: Path) -> None:
    """Check the job's report (`batcher report --format json`) against the emulator's counters, filling `f`."""
    problems = f.problems
    head, tasks = report["summary"], report["tasks"]
    by_key: dict[str, dict[str, Any]] = {t["key"]: t for t in tasks}
    billed: dict[str, int] = stats["batch_lines_by_key"]
    shas: dict[str, str] = stats["image_sha256_by_key"]

    # every task final, failed only for a cause the faults give
    f.succeeded = sum(t["status"] == "succeeded" for t in tasks)
    for t in tasks:
        if t["status"] == "failed":
            bump(f.failed_by_cause, str(t.get("failure")))
    open_tasks = [t for t in tasks if t["status"] not in ("succeeded", "failed")]
    if len(tasks) != f.tasks or open_tasks:
        states: dict[str, int] = {}
        for t in open_tasks:
            bump(states, t["status"])
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
    f.other_files = (
        sum(1 for p in out_dir.rglob("*") if p.is_file() and p.resolve() not in named) if out_dir.exists() else 0
    )
    if out_dir.exists():
        f.local_shard_files = sum(1 for p in out_dir.rglob("*.jsonl") if p.resolve() not in named)
    f.files_uploaded, f.files_deleted = int(stats["files_uploaded"]), int(stats["files_deleted"])
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
    # a batch that ended with no responses file bills N lines (batchStats) without saying which: its paid tasks
    # can only be counted per batch, and the total check below holds them
    no_file = set(stats["batches_without_file"])
    never_billed = [t for t in ledger_paid if billed.get(t["key"], 0) == 0 and t.get("remote_task_id") not in no_file]
    if never_billed:
        problems.append(f"the ledger bills {len(never_billed)} tasks whose key the API never billed (e.g. task "
                        f"{never_billed[0]['task']}: {never_billed[0]['status']}, {never_billed[0].get('failure')})")  # fmt: skip
    names = known_batches(db) | {str(t["remote_task_id"]) for t in tasks if t.get("remote_task_id")}
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
