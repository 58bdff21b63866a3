"""Looking back at a job and acting on what it left: compare manifests (`diff`, `estimate --against`), retry what
failed, write its report, pull its outputs from a bucket. Thin over the store, as session.py is for runs."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batcher import storage
from batcher.config import image_price
from batcher.diff import Diff, Entry, diff, entry
from batcher.errors import BatcherError, ConfigError, OutputError
from batcher.manifest import Manifest, load_manifest
from batcher.models import RETRY_CHOICES
from batcher.report import rows as report_rows
from batcher.report import write_csv, write_json
from batcher.session import cache_forecast, job_prices, job_summary, store_to_read
from batcher.storage import reading
from batcher.store import Job, RetryPlan, Store


def _entries(manifest: Manifest) -> Iterator[Entry]:
    for spec in manifest.specs():
        yield entry(spec.name, spec.filename, spec.key, spec.model, spec.source)


async def compare(old: str | None, new_path: str, db: str | None, price: Decimal | None, *,
                  against: str | None = None, use_cache: bool = True) -> Diff:  # fmt: skip
    """`batcher diff OLD NEW`, or `estimate NEW --against JOB` (`old` None): added, removed, changed and
    unchanged tasks, and what the added and changed ones cost (less those already made, with `db`)."""
    new = load_manifest(new_path)
    override = price if price is not None else new.settings.price_usd
    olds: list[Entry] = []
    if old is not None:
        olds = list(_entries(load_manifest(old)))
    made: Callable[[str], bool] | None = None
    if (store := await store_to_read(db, required=against is not None)) is not None:
        try:
            if against is not None:
                job = await store.job(against)
                olds = [entry(r["name"], r["filename"], r["key"], r["model"], r["source"])
                        async for r in store.listed_tasks(job)]  # fmt: skip
            own = await store.find_job(new.settings.name)
            done = await store.succeeded_keys(own.id) if own is not None else set()
            outputs = await store.outputs_by_key(None if own is None else own.id) if use_cache else {}
            forecast = cache_forecast(outputs)

            def made(key: str) -> bool:
                return key in done or forecast(key)

        finally:
            await store.close()
    elif against is not None:
        raise ConfigError(f"--against {against} needs the store that holds the job: give --db")
    s = new.settings
    if s.route == "batch":  # the change is paid at the price of the route it takes
        override = price if price is not None else s.batch_price_usd
    return diff(olds, _entries(new), lambda m: image_price(s.provider, s.route, m, override), made)


# --- retrying what failed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryOutcome:
    """What `retry` did or would do (`dry_run`): the plan (tasks created again per model, fetched again, by
    cause, left failed), what creating them again may cost at most, and how many were put back."""

    job: str
    plan: RetryPlan
    cost_micros: int  # at most: every task created again billed at its unit price
    done: int  # tasks put back (0 for a dry run)


async def retry(db: str, job_name: str, only: tuple[str, ...], *, recreate: bool, dry_run: bool,
                price: Decimal | None) -> RetryOutcome:  # fmt: skip
    """`batcher retry JOB`: the job's failed tasks of the chosen causes back to work; the plan and its cost are
    worked out (and shown) before anything changes."""
    causes = frozenset().union(*(RETRY_CHOICES[c] for c in only))
    store = await Store.open(db, create=False)
    try:
        job = await store.job(job_name)
        plan = await store.retry_plan(job, causes, recreate=recreate)
        prices = job_prices(sorted(plan.create), job, price)
        cost = sum(n * prices[m] for m, n in plan.create.items())
        done = 0 if dry_run or not plan.tasks else await store.retry_failed(job, causes, recreate=recreate,
                                                                             now=time.time())  # fmt: skip
    finally:
        await store.close()
    return RetryOutcome(job.name, plan, cost, done)


LINK_EXPIRY_S = 7 * 24 * 3600  # signed links to a bucket's originals on the HTML report: a week (S3's longest)

# --- the report ---------------------------------------------------------------------------------------------


async def write_report(db: str, job: str | None, fmt: str, output: str | None) -> str | None:
    """`batcher report`: the job's summary and every task as JSON, CSV or the HTML gallery (with its thumbnails
    beside the page); returns a line for the terminal, if any. Reads only: a missing store is not created."""
    from batcher import gallery, thumbs

    store = await Store.open(db, create=False)
    try:
        the_job = await _report_job(store, job)
        head = await job_summary(store, the_job)
        try:
            out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        except OSError as e:
            raise OutputError(f"cannot write the report to {output}: {e.strerror}") from None
        try:
            if fmt == "json":
                await write_json(out, head, report_rows(store, the_job))
            elif fmt == "csv":
                await write_csv(out, report_rows(store, the_job))
            elif fmt == "html" and output:
                task_rows = [r async for r in report_rows(store, the_job)]
                files = [r["file"] for r in task_rows if r["file"]]
                fetch = reading.fetcher(asyncio.get_running_loop())
                made = await asyncio.to_thread(thumbs.make_all, files, output, fetch=fetch)
                links = await reading.signed_links(files, LINK_EXPIRY_S)
                expire = reading.expires_label(LINK_EXPIRY_S)
                out.writelines(gallery.render(head, task_rows, await store.calls(the_job), output, made.thumbs,
                                              links, expire))  # fmt: skip
                return (f"thumbnails in {thumbs.folder(output)}: {made.made} made, {made.reused} reused, "
                        f"{made.problems} images missing or unreadable")  # fmt: skip
            else:
                raise ValueError(f"unknown report format {fmt!r}")
        finally:
            if output:
                out.close()
    finally:
        await store.close()
        await storage.close_all()
    return None


async def pull(db: str, job_name: str, folder: str) -> reading.Pulled:
    """`batcher pull`: copy JOB's outputs (from a bucket or a folder) into `folder`, each checked against the
    sha256 the store recorded; returns what was copied, already there, and refused."""
    store = await Store.open(db, create=False)
    try:
        job = await store.job(job_name)
        rows = [(r["output_path"], r["sha256"]) async for r in store.task_rows(job) if r["output_path"]]
    finally:
        await store.close()
    try:
        return await reading.pull(rows, job.output_dir, os.path.abspath(folder))
    finally:
        await storage.close_all()


async def report_table(db: str, job: str | None) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """The summary and rows `batcher report` shows as a table."""
    store = await Store.open(db, create=False)
    try:
        the_job = await _report_job(store, job)
        return await job_summary(store, the_job), [r async for r in report_rows(store, the_job)]
    finally:
        await store.close()


async def _report_job(store: Store, job: str | None) -> Job:
    jobs = await store.jobs()
    if job is None and len(jobs) != 1:
        names = ", ".join(j.name for j in jobs) or "none"
        raise BatcherError(f"name the job to report on (jobs in the store: {names})")
    return await store.job(job) if job is not None else jobs[0]
