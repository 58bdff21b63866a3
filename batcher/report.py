"""What a run did and cost: the summary and per-task rows, as plain values for the table, JSON and CSV views."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Mapping
from typing import IO, Any

from sqlalchemy import RowMapping

from batcher.models import TaskStatus
from batcher.money import micros_to_usd
from batcher.store import Job, Ledger, Store

ROW_FIELDS = (
    "task", "key", "name", "prompt", "model", "quality", "size", "status", "attempts", "remote_task_id", "file",
    "sha256", "bytes", "cost_usd", "error", "failure", "possible_double_charge", "source", "cached_from",
)  # fmt: skip


def batch_saved_micros(billed: int, unit_micros: Mapping[str, int], batch_unit_micros: Mapping[str, int]) -> int | None:
    """What `billed` images by batch saved against the online price, or None when that is not known.

    The ledger counts batch lines, not their models. With one model priced both ways the figure is exact;
    with several it is the least it can have been (every line taken as the model whose batch price saves
    least), so the report never claims a saving that may not have happened. A model priced only one way has
    no saving to compare and is left out; with none priced both ways the saving is unknown."""
    if billed == 0:
        return 0
    per_image = [unit_micros[m] - batch_unit_micros[m] for m in unit_micros if m in batch_unit_micros]
    return billed * min(per_image) if per_image else None


def summary(
    job: Job,
    ledger: Ledger,
    unit_micros: Mapping[str, int],
    *,
    budget_micros: int | None = None,
    batch_unit_micros: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The job's counts and money. `budget_micros`: the budget a run held to (`--max-cost`), else the job's.
    `unit_micros`, `batch_unit_micros`: each model's online and batch price (None: no batch prices known)."""
    c = ledger.counts
    tasks = sum(c.values())
    wall = None
    if ledger.first_call_at is not None and ledger.last_call_at is not None:
        wall = round(ledger.last_call_at - ledger.first_call_at, 3)
    succeeded = c.get(TaskStatus.SUCCEEDED, 0)
    limit = budget_micros if budget_micros is not None else job.budget_micros
    budget = None if limit is None else str(micros_to_usd(limit))
    left = None if limit is None else str(micros_to_usd(max(limit - ledger.cost_micros - ledger.held_micros, 0)))
    batch_prices = batch_unit_micros or {}
    saved = batch_saved_micros(ledger.batch_billed, unit_micros, batch_prices)
    return {
        "job": job.name,
        "tasks": tasks,
        "succeeded": succeeded,
        "failed": c.get(TaskStatus.FAILED, 0),
        "pending": tasks - succeeded - c.get(TaskStatus.FAILED, 0),
        "retired": ledger.retired,
        "status_counts": dict(sorted(c.items())),
        # what to hold against the provider's invoice: every billed call, and what may have been billed too
        "billed_calls": ledger.billed_calls,
        "paid_unusable": ledger.paid_unusable,
        "paid_result_lost": ledger.result_lost,
        "known_duplicates": ledger.known_duplicates,
        "lost_at_api": ledger.lost_at_api,
        "blocked": ledger.blocked,  # the model gave no image on purpose: failed, not billed
        "cost_usd": str(micros_to_usd(ledger.cost_micros)),
        "held_usd": str(micros_to_usd(ledger.held_micros)),
        # cost_usd apart by route, and what the batch route saved against the online price
        "online_cost_usd": str(micros_to_usd(max(ledger.cost_micros - ledger.batch_spent_micros, 0))),
        "batch_cost_usd": str(micros_to_usd(ledger.batch_spent_micros)),
        "batch_billed": ledger.batch_billed,
        "batch_saved_usd": None if saved is None else str(micros_to_usd(saved)),
        "unit_price_usd": {m: str(micros_to_usd(p)) for m, p in sorted(unit_micros.items())},
        "batch_unit_price_usd": {m: str(micros_to_usd(p)) for m, p in sorted(batch_prices.items())},
        "budget_usd": budget,
        "budget_left_usd": left,
        "price_mismatches": ledger.price_mismatches,
        "failed_generations": ledger.gen_failures,
        "unknown_submissions": ledger.unknown_submissions,
        "api_calls": dict(sorted(ledger.calls.items())),
        "calls_per_image": round(sum(ledger.calls.values()) / succeeded, 3) if succeeded else None,
        "rate_limited_429": ledger.rate_limited,
        "wall_time_s": wall,
    }


def label(r: Mapping[str, Any] | RowMapping) -> str:
    """What a person calls a task: its manifest `name:`, else its output file, else its manifest line."""
    return str(r["name"] or r["filename"] or r["source"])


async def rows(store: Store, job: Job) -> AsyncIterator[dict[str, Any]]:
    origins = await store.cache_origins(job)  # "job:file" of each output reused
    async for r in store.task_rows(job):
        pending_old = r["status"] == TaskStatus.PENDING and r["import_gen"] < job.import_gen
        yield {
            "task": label(r),
            "key": r["key"],
            "name": r["name"],
            "prompt": r["prompt"],
            "model": r["model"],
            "quality": r["quality"],
            "size": r["size"],
            "status": "retired" if pending_old else r["status"],
            "attempts": r["attempts"],
            "remote_task_id": r["remote_task_id"],
            "file": r["output_path"],
            "sha256": r["sha256"],
            "bytes": r["bytes"],  # the image's byte count (`size` is its aspect ratio)
            "cost_usd": str(micros_to_usd(r["cost_micros"])),
            "error": r["last_error"] if r["status"] != TaskStatus.SUCCEEDED else None,
            # a succeeded task's word on its output (why its image is under a derived name)
            "note": r["last_error"] if r["status"] == TaskStatus.SUCCEEDED else None,
            "possible_double_charge": r["unknown_count"] > 0,
            "failure": r["failure"],
            "source": r["source"],
            # where a cached output came from (no API call), and the task's input task
            "cached_from": origins.get(r["cached_from"]) if r["cached_from"] is not None else None,
            "from_key": r["parent_key"],
            # for the HTML gallery; the CSV keeps its columns (ROW_FIELDS)
            "width": r["width"],
            "height": r["height"],
            "submitted_at": r["submitted_at"],
            "finished_at": r["finished_at"],
        }


async def write_json(out: IO[str], head: dict[str, Any], task_rows: AsyncIterator[dict[str, Any]]) -> None:
    """One JSON object {summary, tasks}, written row by row so a large job never sits in memory."""
    out.write('{"summary": ' + json.dumps(head) + ', "tasks": [')
    first = True
    async for row in task_rows:
        out.write(("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False))
        first = False
    out.write("\n]}\n")


async def write_csv(out: IO[str], task_rows: AsyncIterator[dict[str, Any]]) -> None:
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    async for row in task_rows:
        writer.writerow(row)
