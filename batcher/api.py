"""The Python API: the commands as functions that return plain objects and raise the project's typed errors.

`run` blocks (its work runs on a thread of its own with its own event loop, so it works the same inside a
notebook whose loop is running); `arun` is the native async form. Cancelling `arun`'s task, or Ctrl-C during
`run`, stops the way Ctrl-C stops the CLI: creates already on the wire have their replies recorded, nothing is
left half-written, and the same call resumes. A library call prints nothing unless asked (`progress=True`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from batcher.config import db_from
from batcher.errors import BudgetError, ConfigError
from batcher.estimate import Estimate
from batcher.manifest import Manifest, load_manifest
from batcher.models import RETRY_CHOICES, RETRY_DEFAULT
from batcher.results import JobResult, Progress, Status

if TYPE_CHECKING:
    from batcher.job_review import RetryOutcome

T = TypeVar("T")
Source = str | os.PathLike[str] | Sequence[Mapping[str, Any]]
OnProgress = Callable[[Progress], None]
PROGRESS_EVERY_S = 0.5  # how often `on_progress` is called while a run goes on, seconds


def _manifest(source: Source, job: str | None, settings: Mapping[str, Any]) -> Manifest:
    """A manifest's path loaded, or tasks given in code checked (ManifestError lists every problem)."""
    if isinstance(source, str | os.PathLike):
        if settings:
            raise ConfigError(f"settings ({', '.join(settings)}) are given with a task list; a manifest file holds "
                              "its own")  # fmt: skip
        manifest = load_manifest(source)
        return manifest if job is None else replace(manifest, settings=replace(manifest.settings, name=job))
    from batcher.manifest.tasklist import tasks_manifest

    return tasks_manifest(source, settings, job)


def _usd(value: Decimal | float | str | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


class _Stopper:
    """Every runner a call starts, to be asked to stop (gracefully) when the call is cancelled."""

    def __init__(self) -> None:
        self.stopped = False
        self.runners: list[Any] = []

    def __call__(self, runner: Any) -> None:
        self.runners.append(runner)
        if self.stopped:
            runner.request_stop()

    def stop(self) -> None:
        self.stopped = True
        for runner in self.runners:
            runner.request_stop()


def _progress_view(job: str, on_progress: OnProgress | None, rich: bool) -> Any:
    """The `show_progress` a session run takes: the rich display (`rich`) and the callback, or None."""
    if on_progress is None and not rich:
        return None
    from batcher import views

    @contextlib.asynccontextmanager
    async def show(p: Any) -> AsyncIterator[None]:
        async def feed() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                on_progress(Progress.of(job, p))  # type: ignore[misc]

        async with views.live_progress(p, enabled=rich):
            feeder = asyncio.create_task(feed()) if on_progress is not None else None
            try:
                yield
            finally:
                if feeder is not None:
                    feeder.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feeder
                    on_progress(Progress.of(job, p))  # type: ignore[misc]

    return show


async def arun(
    source: Source,
    *,
    job: str | None = None,
    db: str | None = None,
    out: str | None = None,
    provider: str | None = None,
    route: str | None = None,
    max_cost: Decimal | float | str | None = None,
    emulate: bool = False,
    on_progress: OnProgress | None = None,
    progress: bool = False,
    **settings: Any,
) -> JobResult:
    """Import the tasks (idempotently) and drive every one to a final state; the async form of `run`.

    Args:
        source: a manifest's path (YAML or CSV), or the tasks as a list of dicts, each with a manifest row's
            fields and template variables (`prompt`, `size`, `quality`, `model`, `name`, `filename`, `seed`,
            `images`, `from`, any other key a variable of the templates).
        job: the job's name (default: the manifest's; for a task list, its `job` setting, else "tasks").
        db: the job store, a SQLite path or a database URL (default: $BATCHER_DB, else ./batcher.db).
        out: write the images here instead of the job's output directory.
        provider: "linkmodel", "gemini" or "vertex", over the manifest's.
        route: "online" or "batch" (Gemini Batch Mode), over the manifest's.
        max_cost: the budget in USD: no create that could pass it is started.
        emulate: rehearse against an in-process emulator of the provider (no key, no cost).
        on_progress: called with a Progress about twice a second, and once at the end (from the thread the
            run works on: with `run`, not the caller's).
        progress: show the rich progress display on stderr (nothing is printed otherwise).
        **settings: with a task list, the job's manifest-level keys (`model`, `size`, `quality`, `prompt`,
            `output`, `price_usd`, `budget_usd`, `rate_limit`, `retries`, `provider`, `route`, `batch`, ...).

    Returns:
        The job's JobResult (every task of the job, this run's and earlier runs').

    Raises:
        ManifestError: the manifest or task list is not valid (every problem listed; nothing written).
        BudgetError: the budget was reached (`.result` holds the JobResult so far).
        AuthError, QuotaError, ConfigError, StoreError, OutputError: as the CLI reports them (`.message`,
            `.exit_code`); everything done is kept, and the same call resumes.
        asyncio.CancelledError: the task was cancelled; it stopped gracefully first.
    """
    from batcher import session

    manifest = _manifest(source, job, settings)  # before anything is opened: a bad task list writes nothing
    opts = session.RunOptions(str(manifest.path), db_from(db), emulate, max_cost=_usd(max_cost), out=out,
                              provider=provider, route=route)  # fmt: skip
    stopper = _Stopper()
    token = session.STOP_HOOK.set(stopper)
    try:  # the work is a task of its own (with the hook in its context), shielded from the caller's cancel
        view = _progress_view(manifest.settings.name, on_progress, progress)
        work = asyncio.ensure_future(session.run_job(opts, show_progress=view, manifest=manifest))
    finally:
        session.STOP_HOOK.reset(token)
    cancelled = False
    while True:
        try:
            outcome = await asyncio.shield(work)
            break
        except asyncio.CancelledError:
            if work.done():
                raise
            cancelled = True  # stop as Ctrl-C does, and wait for the replies on the wire to be recorded
            stopper.stop()
    if cancelled:
        raise asyncio.CancelledError
    return await _outcome(outcome, opts.db)


async def _outcome(outcome: Any, db: str) -> JobResult:
    """A session's RunSummary as the API's result, or its error raised."""
    from batcher.runner import StopReason

    r = outcome.result
    if r.reason == StopReason.FATAL and r.error is not None:
        raise r.error
    result = JobResult.of(outcome.summary, await _rows(db, outcome.summary["job"]), r.reason)
    if r.reason == StopReason.BUDGET:
        error = BudgetError(outcome.budget_message)
        error.result = result
        raise error
    if r.reason == StopReason.INTERRUPTED:
        raise KeyboardInterrupt
    return result


async def _rows(db: str, job: str) -> list[dict[str, Any]]:
    from batcher.report import rows
    from batcher.store import Store

    store = await Store.open(db, create=False)
    try:
        return [row async for row in rows(store, await store.job(job))]
    finally:
        await store.close()


def _blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine to its end on a thread of its own with its own loop (a running loop in the caller's
    thread, as in Jupyter, is left alone). Ctrl-C while it works cancels it, gracefully, then raises
    KeyboardInterrupt."""
    box: dict[str, Any] = {}
    started, ended = threading.Event(), threading.Event()

    def work() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(make())
            box["loop"], box["task"] = loop, task
            started.set()
            box["result"] = loop.run_until_complete(task)
        except BaseException as e:  # handed to the calling thread
            box["error"] = e
        finally:
            started.set()
            loop.close()
            ended.set()

    thread = threading.Thread(target=work, name="batcher-run", daemon=True)
    thread.start()
    # The end is awaited on an Event, not by Thread.join: on Python 3.11, a KeyboardInterrupt raised inside
    # join() marks the thread as stopped while it still runs (bpo-45274's fix releases its lock), so the join
    # after the cancel returned at once and the process left mid-stop, a create on the wire left `submitting`.
    try:
        while not ended.wait(0.2):  # short waits: a Ctrl-C reaches this thread at once
            pass
    except KeyboardInterrupt:
        started.wait()
        loop, task = box.get("loop"), box.get("task")
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: it has ended
                loop.call_soon_threadsafe(task.cancel)
        ended.wait()  # the graceful stop: replies on the wire recorded (a second Ctrl-C leaves at once)
        raise
    thread.join()
    if "error" in box:
        error: BaseException = box["error"]
        if isinstance(error, asyncio.CancelledError):
            raise KeyboardInterrupt from None
        raise error
    result: T = box["result"]
    return result


def run(
    source: Source,
    *,
    job: str | None = None,
    db: str | None = None,
    out: str | None = None,
    provider: str | None = None,
    route: str | None = None,
    max_cost: Decimal | float | str | None = None,
    emulate: bool = False,
    on_progress: OnProgress | None = None,
    progress: bool = False,
    **settings: Any,
) -> JobResult:
    """Import the tasks (idempotently) and drive every one to a final state; blocks until done.

    The arguments, result and errors are `arun`'s. Called again with the same source, it resumes: tasks done
    are not paid for again. Ctrl-C stops it gracefully (creates on the wire recorded) and raises
    KeyboardInterrupt. Works inside a running event loop (Jupyter): the run has a thread and loop of its own.
    """
    return _blocking(lambda: arun(source, job=job, db=db, out=out, provider=provider, route=route, max_cost=max_cost,
                                  emulate=emulate, on_progress=on_progress, progress=progress, **settings))  # fmt: skip


def estimate(
    source: Source,
    *,
    job: str | None = None,
    db: str | None = None,
    price: Decimal | float | str | None = None,
    use_cache: bool = True,
    **settings: Any,
) -> Estimate:
    """What running `source` would cost: new, cached and already-done tasks. No network; writes nothing.

    `source`, `job` and `**settings` are `run`'s; `db` (default as `run`'s) is only read, and not created;
    `price` overrides every model's price per call; `use_cache` False counts tasks another job made as new."""
    from batcher import session

    manifest = _manifest(source, job, settings)
    return _blocking(lambda: session.dry_run(manifest, db_from(db), _usd(price), use_cache=use_cache))


def retry(
    job: str,
    *,
    db: str | None = None,
    only: Sequence[str] = RETRY_DEFAULT,
    recreate: bool = False,
    dry_run: bool = False,
    price: Decimal | float | str | None = None,
) -> RetryOutcome:
    """Put the job's failed tasks back to work, by cause; the next `run` does them. Returns a RetryOutcome:
    `plan` (tasks, by cause, created again by model, fetched again, left failed), `cost_micros` (at most) and
    `done` (tasks put back; 0 with `dry_run`, which changes nothing).

    `only`: which failures, of generation, download, transient, refused, blocked, all (default: generation,
    download, transient). `recreate`: create again even tasks whose image was paid for but not saved."""
    from batcher import job_review

    unknown = sorted(set(only) - set(RETRY_CHOICES))
    if unknown:
        raise ConfigError(f"unknown failure cause {', '.join(unknown)}; the causes: {', '.join(sorted(RETRY_CHOICES))}")
    return _blocking(lambda: job_review.retry(db_from(db), job, tuple(only), recreate=recreate, dry_run=dry_run,
                                           price=_usd(price)))  # fmt: skip


def report(job: str | None = None, *, db: str | None = None) -> JobResult:
    """The job's summary and every task, as a JobResult (`job` may be left out when the store holds one job).
    Reads only: a missing store is not created (StoreMissingError)."""
    from batcher import job_review

    async def read() -> JobResult:
        head, rows = await job_review.report_table(db_from(db), job)
        return JobResult.of(head, list(rows))

    return _blocking(read)


def status(*, db: str | None = None) -> Status:
    """Every job in the store with its tasks per status, the workers at work and the recent batch shards."""
    from batcher.overview import store_status

    jobs, workers, shards = _blocking(lambda: store_status(db_from(db)))
    return Status(jobs, workers, shards)
