"""What a person sees on the terminal: rich tables, the live progress bar, plain lines when not a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from batcher.diff import KINDS, Diff
from batcher.estimate import Estimate
from batcher.models import BILLED_APART
from batcher.money import fmt_usd

if TYPE_CHECKING:
    from batcher.job_review import RetryOutcome
    from batcher.runner import Progress as RunProgress

PLAIN_EVERY_S = 5.0  # progress lines when stderr is not a terminal, seconds
STATUSES = ("pending", "submitting", "submitted", "unknown", "succeeded", "failed", "retired")  # `status`'s order
PROMPT_CHARS = 48  # of a prompt in the report's table; JSON, CSV and the HTML page carry it whole
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def _prices(unit_price: Mapping[str, Decimal]) -> str:
    """ "model $0.067, …": the unit price of each model, for the estimate and the diff."""
    return ", ".join(f"{m} ${p}" for m, p in sorted(unit_price.items()))


def estimate_table(est: Estimate) -> None:
    table = Table(title=f"Estimate for job {est.job}", title_justify="left")
    for col in ("model", "size", "tasks"):
        table.add_column(col, justify="right" if col == "tasks" else "left")
    for (model, size), n in sorted(est.by_model_size.items()):
        table.add_row(model, size, str(n))
    stdout.print(table)
    prices = _prices(est.unit_price)
    lines = [
        f"rows in manifest      {est.rows}",
        f"duplicate rows        {est.duplicates} (collapsed)",
        f"distinct tasks        {est.tasks}",
        f"already done          {est.done}",
        f"cached (free)         {est.cached}",
        f"new (to pay for)      {est.to_run}",
        f"unit price            {prices or '-'} per call",
        f"estimated cost        ${est.cost_usd:.3f}",
    ]
    batch, saving = est.cost_batch_usd, est.batch_saving_usd
    if batch is None or saving is None:
        lines.append(f"by batch              {est.batch_note}")
    else:
        lines.append(f"by batch              ${batch:.3f} (saves ${saving:.3f}; route: {est.route})")
    if est.budget_usd is not None:
        cost = est.route_cost_usd
        verdict = "within" if cost <= est.budget_usd else "OVER"
        by = " by batch" if est.route == "batch" and batch is not None else ""
        lines.append(f"budget                ${est.budget_usd} ({verdict} budget{by})")
    stdout.print("\n".join(lines), highlight=False)


def status_table(
    counts: Mapping[str, Mapping[str, int]],
    workers: Sequence[Mapping[str, Any]],
    shards: Sequence[Mapping[str, Any]] = (),
) -> None:
    # only the statuses some job has; every table whole or, too wide for the terminal, one line a row
    shown = [s for s in STATUSES if any(c.get(s, 0) for c in counts.values())]
    jobs = [[job, *(str(c.get(s, 0)) for s in shown), str(sum(c.values()))] for job, c in sorted(counts.items())]
    _table_or_lines("Jobs", ["job", *shown, "total"], jobs, right=True)
    if workers:
        now = time.time()
        rows = [[w["id"], w["host"], str(w["pid"]), w["jobs"], f"{now - w['heartbeat_at']:.0f} s ago",
                 str(w.get("holds", 0))] for w in workers]  # fmt: skip
        _table_or_lines("Workers", ["worker", "host", "pid", "jobs", "heartbeat", "holds"], rows)
    if shards:
        rows = []
        for sh in shards:
            stats = json.loads(sh["detail"]) if sh.get("detail", "").startswith("{") else {}
            done = f"{stats.get('succeeded', 0) + stats.get('failed', 0)} of {stats['requests']}" if stats else ""
            rows.append(
                [sh["job"], sh["display_name"], sh["state"], str(sh["requests"]), sh["remote_name"] or "", done]
            )
        _table_or_lines("Batch shards", ["job", "shard", "state", "requests", "batch", "done of requests"], rows)


def _table_or_lines(title: str, columns: list[str], rows: list[list[str]], *, right: bool = False) -> None:
    """A table with nothing cut, when it fits the terminal; else, per row, its first cell and the others named
    (empty and zero cells left out)."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if right and i else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    if stdout.measure(table, options=stdout.options.update_width(10_000)).maximum <= stdout.width:
        stdout.print(table)
        return
    lines = [f"{row[0]}: " + ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:], strict=True) if v not in ("", "0"))
             for row in rows]  # fmt: skip
    stdout.print(title + "\n" + "\n".join(lines), highlight=False, soft_wrap=False)


def short(prompt: str, limit: int = PROMPT_CHARS) -> str:
    """The prompt on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(prompt.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def report_table(head: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> None:
    table = Table(title=f"Job {head['job']}", title_justify="left")
    for col in ("task", "prompt", "size", "status", "attempts", "cost_usd", "file / error"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], short(r["prompt"]), r["size"], r["status"], str(r["attempts"]), r["cost_usd"],
                      r["file"] or r["error"] or "")  # fmt: skip
    stdout.print(table)
    summary_lines(head)


def retry_lines(outcome: RetryOutcome, *, dry_run: bool) -> None:
    plan = outcome.plan
    causes = ", ".join(f"{c} {n}" for c, n in sorted(plan.by_cause.items())) or "none"
    created = sum(plan.create.values())
    lines = [
        f"job {outcome.job}: {plan.tasks} failed tasks to retry ({causes})",
        f"  created again: {created}, costing at most {fmt_usd(outcome.cost_micros)}",
        f"  fetched again (paid for, not saved; a fresh query for the URL, no charge): {plan.fetch}",
    ]
    if plan.left:
        lines.append("  left failed: " + ", ".join(f"{c} {n}" for c, n in sorted(plan.left.items()))
                     + " (choose them with --only)")  # fmt: skip
    if plan.in_shards:
        lines.append(f"  {plan.in_shards} lines wait in open Batch Mode shards: `batcher run MANIFEST` or `batcher "
                     f"work {outcome.job}` collects them from the API, at no new charge")  # fmt: skip
    if dry_run:
        lines.append("dry run: nothing was changed")
    elif outcome.done:
        lines.append(f"{outcome.done} tasks are pending again: `batcher run MANIFEST` or `batcher work {outcome.job}` "
                     "does them")  # fmt: skip
    stdout.print("\n".join(lines), highlight=False)


def summary_lines(head: Mapping[str, Any]) -> None:
    calls = ", ".join(f"{k} {v}" for k, v in head["api_calls"].items()) or "none"
    per_image = "–" if head["calls_per_image"] is None else head["calls_per_image"]  # nothing succeeded
    lines = [
        f"job {head['job']}: {head['succeeded']} succeeded, {head['failed']} failed, {head['pending']} not finished "
        f"of {head['tasks']}",
        f"billed calls {head['billed_calls']}, cost ${head['cost_usd']}"
        + (f" of budget ${head['budget_usd']}" if head.get("budget_usd") else ""),
        f"API calls: {calls}; 429s {head['rate_limited_429']}; calls per image {per_image}",
        f"failed generations {head['failed_generations']}; unknown submissions (possible double charges) "
        f"{head['unknown_submissions']}",
    ]
    billed_apart = [(head.get(key), words) for key, words, _ in BILLED_APART if key != "lost_at_api"]
    if any(n for n, _ in billed_apart):
        lines.append("of the billed calls: " + ", ".join(f"{what} {n}" for n, what in billed_apart if n))
    if head.get("batch_billed"):
        saved = head.get("batch_saved_usd")
        lines.append(f"of the cost: online ${head['online_cost_usd']}, by batch ${head['batch_cost_usd']} "
                     f"({head['batch_billed']} images; "
                     + (f"saved ${saved} against the online price)" if saved is not None else "saving not known)"))  # fmt: skip
    if head.get("lost_at_api"):
        lines.append(f"lost at the API before any Success was seen (possibly billed) {head['lost_at_api']}")
    if head.get("blocked"):
        lines.append(f"blocked by the model (no image, not billed; `batcher retry --only blocked`) {head['blocked']}")
    if head.get("cached"):
        lines.append(f"from the cache (no API call, no cost) {head['cached']}")
    if head.get("price_mismatches"):
        lines.append(f"the API reported a price other than the unit price on {head['price_mismatches']} calls")
    stderr.print("\n".join(lines), highlight=False)


@contextlib.asynccontextmanager
async def live_progress(progress: RunProgress, enabled: bool) -> AsyncIterator[None]:
    """A progress bar on a terminal; a line every few seconds otherwise; nothing when disabled."""
    if not enabled:
        yield
        return
    task = asyncio.create_task(_bar(progress) if sys.stderr.isatty() else _lines(progress))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _figures(p: RunProgress) -> tuple[int, str]:
    elapsed = max(time.monotonic() - p.started, 1e-6)
    done = p.done_before + p.succeeded + p.failed
    text = (
        f"in flight {p.in_flight}, failed {p.failed}, {p.requests / elapsed:.1f} req/s, spent {fmt_usd(p.spent_micros)}"
    )
    return done, f"{text}; {p.detail}" if p.detail else text


async def _bar(p: RunProgress) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # runs only

    columns = (TextColumn("[bold]run"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=stderr, transient=False) as bar:
        tid = bar.add_task("", total=p.total)
        while True:
            done, text = _figures(p)
            bar.update(tid, completed=done, total=p.total, description=text)
            await asyncio.sleep(0.25)


async def _lines(p: RunProgress) -> None:
    while True:
        await asyncio.sleep(PLAIN_EVERY_S)
        done, text = _figures(p)
        stderr.print(f"progress: {done}/{p.total} done, {text}", highlight=False)


# --- cache and chains -------------------------------------------------------------------------------------


def diff_table(d: Diff, title: str) -> None:
    """`batcher diff` / `estimate --against`: counts per kind, some examples, and the cost of the change."""
    table = Table(title=title, title_justify="left")
    for col in ("change", "tasks", "e.g."):
        table.add_column(col, justify="right" if col == "tasks" else "left")
    for kind in KINDS:
        shown = ", ".join(e.slot.partition(":")[2] for e in d.examples[kind][:3])
        more = "" if d.counts[kind] <= 3 else ", ..."
        table.add_row(kind, str(d.counts[kind]), shown + more if shown else "")
    stdout.print(table)
    prices = _prices(d.unit_price)
    lines = [
        f"added + changed       {d.counts['added'] + d.counts['changed']}",
        f"already made (free)   {d.free}",
        f"to pay for            {d.to_pay}",
        f"unit price            {prices or '-'} per call",
        f"cost of the change    ${d.cost_usd:.3f}",
    ]
    stdout.print("\n".join(lines), highlight=False)
