"""The `batcher` command: options in, one call into `session`, results out. Errors become one line and an exit code."""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

import click

from batcher import storage, views
from batcher.config import ApiSettings, db_from
from batcher.emulator import EmulatorConfig, Latency
from batcher.errors import BatcherError, ExitCode, ManifestError
from batcher.heap import keep_freed_memory
from batcher.models import RETRY_CHOICES, RETRY_DEFAULT, OnUnknown
from batcher.providers.registry import REGISTRY
from batcher.store import Store

if TYPE_CHECKING:
    from batcher import session

# Commands load what they use when they run: `status` need not import aiohttp, pydantic and the emulator.

T = TypeVar("T")
MAX_PROBLEMS_SHOWN = 50
GC_YOUNG_THRESHOLD = 20_000  # allocations between two collections of the youngest generation (Python: 700)


def _usd(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value.lstrip("$"))
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter("must be a non-negative amount in USD")
    return amount


def _staging(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A Cloud Storage folder for batch files, checked as the manifest's `batch: staging` is."""
    if value is None:
        return None
    from batcher.manifest.loader import staging_problem

    uri = value.strip().rstrip("/")
    if why := staging_problem(uri):
        raise click.BadParameter(f"{why}, not {value!r}")
    return uri


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """`90s`, `30m`, `8h`, `1d` or plain seconds, as seconds."""
    if value is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = value.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale is not None else text) * (scale or 1.0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 30m, 8h or 1d") from None
    if not 0 < seconds <= 30 * 86400:
        raise click.BadParameter("must be more than 0 and at most 30 days")
    return seconds


def _latency(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Latency | None:
    if value is None:
        return None
    try:
        return Latency.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _fail(error: BatcherError) -> None:
    if isinstance(error, ManifestError):
        problems = error.problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        click.echo(f"batcher: the manifest is not valid ({count}); nothing was written:", err=True)
        for p in problems[:MAX_PROBLEMS_SHOWN]:
            click.echo(f"  {p}", err=True)
        if len(problems) > MAX_PROBLEMS_SHOWN:
            click.echo(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more", err=True)
    else:
        click.echo(f"batcher: error: {error.message}", err=True)
    sys.exit(error.exit_code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # what start-up loaded stays for the whole run: keep it out of the collector's way; and collect the young
    # generation less often (each API call leaves many short-lived objects, most freed before any collection)
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(_closing(coro))
    except BatcherError as e:
        _settled()
        _fail(e)
        raise AssertionError("unreachable") from None
    except KeyboardInterrupt:  # before the run's own handlers were in place, or after (see session._signals)
        _interrupted()
    _settled()
    return result


async def _closing(coro: Coroutine[Any, Any, T]) -> T:
    """`coro`, then the bucket clients it opened closed on the same loop (no connection left unclosed)."""
    try:
        return await coro
    finally:
        await storage.close_all()


def _settled() -> None:
    """The outcome is decided and committed: a late Ctrl-C or SIGTERM must not turn it into "Aborted!" or a
    death by signal while the last lines are printed."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _interrupted() -> NoReturn:
    _settled()
    click.echo("batcher: interrupted; run the same command again to resume anything left", err=True)
    sys.exit(ExitCode.INTERRUPTED)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): a quarter less CPU per API call than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _with_db(f: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--db", "db", metavar="PATH|URL", help="job store: a SQLite path or a database URL "
                  "[env BATCHER_DB; default ./batcher.db]")  # fmt: skip
    @functools.wraps(f)
    def wrapper(*args: Any, db: str | None, **kwargs: Any) -> Any:
        return f(*args, db=db_from(db), **kwargs)

    return wrapper


class _Commands(click.Group):
    """The group, with `emulator` loaded only when it is asked for (it brings the aiohttp server)."""

    LAZY: ClassVar[dict[str, str]] = {"emulator": "batcher.emulator.command"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            command: click.Command = getattr(importlib.import_module(self.LAZY[cmd_name]), cmd_name)
            return command
        return super().get_command(ctx, cmd_name)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from batcher import version  # importlib.metadata only when asked: it would slow every command's start

    click.echo(f"batcher {version()}")
    ctx.exit()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="print the version and exit")  # fmt: skip
@click.option("-v", "--verbose", count=True, help="more log lines on stderr (-vv for debug)")
def main(verbose: int) -> None:
    """Run thousands of paid image generations as one resumable, rate-limited, cost-accounted batch."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    # the cloud clients log every request's headers at DEBUG, a session token among them: never shown
    for name in ("botocore", "aiobotocore", "s3fs", "gcsfs", "fsspec", "google", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--db", "db", metavar="PATH|URL", help="count tasks already done in this store (read only)")
@click.option("--price", callback=_usd, metavar="USD", help="price per call, overriding the manifest and table")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--no-cache", is_flag=True, help="count tasks finished in other jobs as new (as `run --no-cache` would)")
@click.option("--against", metavar="JOB", help="also list what changed since the tasks JOB last imported (needs --db)")  # fmt: skip
def estimate(manifest: str, db: str | None, price: Decimal | None, as_json: bool, no_cache: bool,
             against: str | None) -> None:  # fmt: skip
    """Dry run: what MANIFEST will cost: new, cached and already-done tasks. No network; writes nothing."""
    from batcher import job_review, session

    if against is not None and db is None:
        raise click.UsageError("--against needs --db: the store that holds the job")
    est = _run(session.dry_run(manifest, db, price, use_cache=not no_cache))
    change = None
    if against is not None:
        change = _run(job_review.compare(None, manifest, db, price, against=against, use_cache=not no_cache))
    if as_json:
        out = est.as_json() | ({"against": {"job": against, **change.as_json()}} if change is not None else {})
        click.echo(json.dumps(out, indent=2))
    else:
        views.estimate_table(est)
        if change is not None:
            views.diff_table(change, f"Changes against job {against}")


@main.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--db", "db", metavar="PATH|URL", help="count changed tasks made already in this store as free")
@click.option("--price", callback=_usd, metavar="USD", help="price per call, overriding the manifest and table")
@click.option("--no-cache", is_flag=True, help="with --db: count only the job's own finished tasks as made")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def diff(old: str, new: str, db: str | None, price: Decimal | None, no_cache: bool, as_json: bool) -> None:
    """Which tasks OLD → NEW adds, removes and changes, and what the change costs. No network; writes nothing."""
    from batcher import job_review

    change = _run(job_review.compare(old, new, db, price, use_cache=not no_cache))
    if as_json:
        click.echo(json.dumps(change.as_json(), indent=2))
    else:
        views.diff_table(change, f"Changes from {old} to {new}")


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options `run` and `work` share; they reach the command as one RunOptions `opts`."""

    @_with_db
    @click.option(
        "--provider",
        type=click.Choice(list(REGISTRY)),
        help="the API to generate through, over the manifest's `provider` (default linkmodel)",
    )
    @click.option(
        "--route",
        type=click.Choice(["online", "batch"]),
        help="online (one call per image) or batch (Gemini Batch Mode, Vertex AI batch prediction: half price, "
        "within 24 h), over the manifest's",
    )
    @click.option(
        "--no-wait", is_flag=True, help="batch: exit once every shard is created (exit 5); run again to collect"
    )
    @click.option("--finish-online-after", "finish_online_after", callback=_duration, metavar="DURATION",
                  help="batch: cancel the batches not done after DURATION (e.g. 8h) and finish their tasks online")  # fmt: skip
    @click.option("--staging", callback=_staging, metavar="gs://BUCKET/PREFIX",
                  help="batch: where Vertex AI batch files are staged, over the manifest's `batch: staging`")  # fmt: skip
    @click.option(
        "--emulate", is_flag=True, help="rehearse against an in-process emulator of the API (no key, no cost)"
    )
    @click.option(
        "--emulate-latency",
        callback=_latency,
        metavar="DIST",
        help="emulator latency: fixed:S, uniform:LO:HI, lognormal:MEDIAN:SIGMA",
    )
    @click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        metavar="RPS",
        help="account-wide requests per second (creates and polls); unset: found from 429s",
    )
    @click.option("--max-in-flight", type=click.IntRange(min=1), help="tasks between create and download at once")
    @click.option(
        "--max-connections",
        type=click.IntRange(min=1),
        help=f"open connections to the API at most (default {ApiSettings.max_connections})",
    )
    @click.option("--max-cost", callback=_usd, metavar="USD", help="budget: start no create that could pass it")
    @click.option("--price", callback=_usd, metavar="USD", help="price per call, overriding the manifest and table")
    @click.option("--max-attempts", type=click.IntRange(min=1), help="creates sent per task before it fails")
    @click.option(
        "--on-unknown",
        type=click.Choice([o.value for o in OnUnknown]),
        default=OnUnknown.RESUBMIT.value,
        show_default=True,
        help="a task whose create may have reached the API: create again, or fail it",
    )
    @click.option("--out", metavar="DIR|URI", help="write the images to DIR (relative: to the current folder) or to "
                  "a bucket, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, instead of the job's output directory")  # fmt: skip
    @click.option("--no-cache", is_flag=True, help="generate every task anew, even one whose spec another job has made")
    @click.option("--json", "as_json", is_flag=True, help="print a JSON summary on stdout")
    @click.option("-q", "--quiet", is_flag=True, help="no progress display")
    @functools.wraps(f)
    def wrapper(
        *args: Any,
        db: str,
        provider: str | None,
        route: str | None,
        no_wait: bool,
        finish_online_after: float | None,
        staging: str | None,
        emulate: bool,
        emulate_latency: Latency | None,
        rate: float | None,
        max_in_flight: int | None,
        max_connections: int | None,
        max_cost: Decimal | None,
        price: Decimal | None,
        max_attempts: int | None,
        on_unknown: str,
        no_cache: bool,
        out: str | None,
        **kwargs: Any,
    ) -> Any:
        from batcher import session

        emu = EmulatorConfig(latency=emulate_latency or session.DEMO_LATENCY)
        opts = session.RunOptions(
            kwargs.pop("manifest", ""),
            db,
            emulate,
            rate,
            max_in_flight,
            max_cost,
            price,
            OnUnknown(on_unknown),
            max_attempts,
            emu,
            use_cache=not no_cache,
            max_connections=max_connections,
            out=out,
            provider=provider,
            route=route,
            wait=not no_wait,
            finish_online_after_s=finish_online_after,
            staging=staging,
        )
        return f(*args, opts=opts, **kwargs)

    return wrapper  # fmt: skip


def _report_runs(outcomes: list[session.RunSummary], as_json: bool) -> None:
    """Summaries on stdout (JSON) or stderr, one line on how it ended; exit with the most telling run's code."""
    from batcher.runner import StopReason  # loaded already: the runs came from it

    if as_json:
        heads = [{**o.summary, "worker": o.result.worker_figures()} for o in outcomes]
        click.echo(json.dumps(heads[0] if len(heads) == 1 else heads, indent=2))
    for outcome in outcomes:
        head, result = outcome.summary, outcome.result
        if not as_json:
            views.summary_lines(head)
        if result.error is not None:
            click.echo(f"batcher: error: {result.error.message}", err=True)
        elif result.reason == StopReason.INTERRUPTED:
            click.echo(f"batcher: interrupted with {result.left} tasks left; resume with: {outcome.resume_hint}",
                       err=True)  # fmt: skip
        elif result.reason == StopReason.SUBMITTED:
            click.echo(f"batcher: every batch is created and runs at Google (usually within hours, at most 24 h); "
                       f"collect the images with: {outcome.resume_hint}", err=True)  # fmt: skip
        elif result.elsewhere:
            held = ", ".join(f"{n} by {name}" for name, n in sorted(result.elsewhere.items()))
            click.echo(f"batcher: {sum(result.elsewhere.values())} tasks were sent through another provider and are "
                       f"held there ({held}): collect them with `--provider NAME`; they are never sent twice",
                       err=True)  # fmt: skip
        elif result.reason == StopReason.BUDGET:
            click.echo(f"batcher: {outcome.budget_message}", err=True)
        if head["failed"] and outcome.retry_hint:
            click.echo(f"batcher: {head['failed']} tasks failed; to try them again: {outcome.retry_hint} "
                       f"(--dry-run shows what it would cost), then {outcome.resume_hint}", err=True)  # fmt: skip
    # a run that stopped (interrupted, usage, budget) tells more than one whose tasks failed
    stops = (ExitCode.INTERRUPTED, ExitCode.USAGE, ExitCode.BUDGET)
    codes = [o.exit_code for o in outcomes]
    sys.exit(max(codes, key=lambda c: (c in stops, c)) if codes else ExitCode.OK)


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@_run_options
def run(opts: session.RunOptions, as_json: bool, quiet: bool) -> None:
    """Import MANIFEST and drive every task to a final state. Run it again to resume."""
    from batcher import session

    progress = None if quiet else functools.partial(views.live_progress, enabled=True)
    _report_runs([_run(session.run_job(opts, show_progress=progress))], as_json)


@main.command()
@click.argument("jobs", nargs=-1)
@_run_options
@click.option("--forever", is_flag=True, help="when every job is done, wait for new work instead of stopping")
def work(opts: session.RunOptions, jobs: tuple[str, ...], as_json: bool, quiet: bool, forever: bool) -> None:
    """A worker: drain JOBS (default: every job in the store) alongside any number of other workers.

    Run it on as many machines as you like against one PostgreSQL store (`--db postgresql://...`): tasks are
    claimed with leases, a dead worker's tasks are taken over, and one account-wide rate is shared."""
    from batcher import session

    progress = None if quiet else functools.partial(views.live_progress, enabled=True)
    _report_runs(_run(session.work(opts, jobs, forever=forever, show_progress=progress)), as_json)


@main.command()
@click.argument("job")
@_with_db
@click.option("--only", "only", multiple=True, type=click.Choice(sorted(RETRY_CHOICES)),
              help="which failures: generation, download, transient, refused (only when named) or all "
              "[default: generation, download, transient]")  # fmt: skip
@click.option("--recreate", is_flag=True, help="create again even tasks whose image was paid for but not saved")
@click.option("--dry-run", is_flag=True, help="show what would be retried and what it may cost; change nothing")
@click.option("--price", callback=_usd, metavar="USD", help="price per call, overriding the manifest and table")
def retry(job: str, db: str, only: tuple[str, ...], recreate: bool, dry_run: bool, price: Decimal | None) -> None:
    """Put JOB's failed tasks back to work, by cause; the next `run` or `work` does them. A task whose image was
    paid for but not saved is fetched again (a fresh query for its URL), not created again unless --recreate."""
    from batcher import job_review

    outcome = _run(job_review.retry(db, job, only or RETRY_DEFAULT, recreate=recreate, dry_run=dry_run, price=price))
    views.retry_lines(outcome, dry_run=dry_run)


@main.command("import")
@click.argument("manifest", type=click.Path(dir_okay=False))
@_with_db
@click.option("--price", callback=_usd, metavar="USD", help="price per call, overriding the manifest and table")
def import_(manifest: str, db: str, price: Decimal | None) -> None:
    """Add MANIFEST's new tasks to the store without running them (`run` does this too)."""
    from batcher import session

    result = _run(session.import_only(manifest, db, price))
    click.echo(
        f"job {result.job.name}: {result.rows} rows, {result.added} new tasks, "
        f"{result.rows - result.added} already in the store or duplicates, {result.retired} no longer listed"
    )


@main.command()
@_with_db
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def status(db: str, as_json: bool) -> None:
    """Jobs in the store with their tasks per status, and the workers at work."""
    from batcher.overview import store_status

    counts, workers, shards = _run(store_status(db))
    if as_json:
        click.echo(json.dumps({"jobs": counts, "workers": workers, "shards": shards}, indent=2))
    else:
        views.status_table(counts, workers, shards)


@main.command("cancel")
@click.argument("job")
@_with_db
def cancel(job: str, db: str) -> None:
    """Cancel JOB's batches not collected yet: their unfinished tasks go back to pending, unbilled."""
    from batcher import session

    shards = _run(session.cancel_batches(db, job))
    for c in shards:
        click.echo(f"shard {c.shard}: {c.outcome}", err=True)
    closed = sum(1 for c in shards if c.closed)
    count = len(shards)
    click.echo(f"cancelled {count} batch shard{'s' if count != 1 else ''} of job {job} ({closed} closed, their "
               "tasks pending again; the others are collected by a run, which sends their unfinished tasks again)",
               err=True)  # fmt: skip


@main.command("report")
@click.argument("job", required=False)
@_with_db
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv", "html"]), default="table", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="write to FILE instead of stdout")
def report_(job: str | None, db: str, fmt: str, output: str | None) -> None:
    """Every task of JOB with its file, cost and error, and the job's summary."""
    from batcher import job_review

    if fmt == "html" and not output:
        raise click.UsageError("--format html needs -o FILE: the page links its images relative to where it is")

    if fmt == "table":
        views.report_table(*_run(job_review.report_table(db, job)))
        return
    line = _run(job_review.write_report(db, job, fmt, output))
    if line:
        views.stderr.print(line, highlight=False)


@main.command()
@click.argument("job")
@click.argument("folder", type=click.Path(file_okay=False))
@_with_db
def pull(job: str, folder: str, db: str) -> None:
    """Copy JOB's outputs (from its bucket, or its folder) into FOLDER, checking each file's sha256."""
    from batcher import job_review

    done = _run(job_review.pull(db, job, folder))
    for line in done.refused:
        click.echo(f"not copied: {line}", err=True)
    click.echo(f"{done.copied} copied, {done.present} already there, {len(done.refused)} not copied", err=True)
    if done.refused:
        sys.exit(1)


@main.group()
def db() -> None:
    """The job store's schema."""


@db.command("upgrade")
@_with_db
def db_upgrade(db: str) -> None:
    """Create the store or bring its schema to the newest migration."""

    async def go() -> None:
        store = await Store.open(db)
        await store.close()

    _run(go())
    click.echo(f"job store {db} is at the newest schema")


def entry() -> None:
    """The console script: a Ctrl-C or SIGTERM outside the run's own handlers (before the run starts, or while
    its summary is written) still exits cleanly with 130; every change is already committed."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM means what Ctrl-C means
    keep_freed_memory()  # a run's images churn megabytes of buffers each: reuse them, not fresh pages
    try:
        main()
    except KeyboardInterrupt:
        _interrupted()


if __name__ == "__main__":  # pragma: no cover
    entry()
