"""One command's work, between the CLI and the layers below: import a manifest, connect, drive, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from batcher import connect, storage
from batcher.config import (
    ApiSettings,
    RunConfig,
    batch_prices,
    image_price,
    lease_settings,
)
from batcher.emulator import EmulatorConfig, Latency
from batcher.errors import BatcherError, ConfigError, ExitCode, StoreMissingError
from batcher.estimate import Estimate, estimate
from batcher.manifest import Manifest, load_manifest
from batcher.manifest.offload import import_rows
from batcher.models import ImportRow, OnUnknown
from batcher.money import micros_to_usd, usd_to_micros
from batcher.providers.base import Provider
from batcher.providers.registry import batch_providers, registered
from batcher.report import summary
from batcher.retry import RetryPolicy
from batcher.runner import Runner, RunResult, StopReason
from batcher.storage import objects
from batcher.store import ImportResult, Job, Store

if TYPE_CHECKING:
    from batcher.runner.batch import ShardCancel

log = logging.getLogger("batcher")
DEMO_LATENCY = Latency("uniform", 0.3, 1.5)  # the in-process emulator of `run --emulate`, seconds
WORK_IDLE_S = 5.0  # `work --forever`: how often to look for new work, seconds


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


# Set by a library call (batcher.api): each runner is handed to it, to be stopped on cancellation, and no signal
# handler is installed (the caller's process owns its signals). Unset (the CLI): Ctrl-C and SIGTERM stop the run.
STOP_HOOK: contextvars.ContextVar[Callable[[Stoppable], None] | None] = contextvars.ContextVar(
    "batcher_stop_hook", default=None
)


@dataclass(frozen=True)
class RunOptions:
    manifest: str
    db: str
    emulate: bool = False
    rate: float | None = None
    max_in_flight: int | None = None
    max_cost: Decimal | None = None
    price: Decimal | None = None
    on_unknown: OnUnknown = OnUnknown.RESUBMIT
    max_attempts: int | None = None
    emulator: EmulatorConfig = field(default_factory=lambda: EmulatorConfig(latency=DEMO_LATENCY))
    use_cache: bool = True  # `--no-cache` sets False
    max_connections: int | None = None
    out: str | None = None  # `--out`: this process writes here, whatever the job's stored directory
    provider: str | None = None  # `--provider`: over the manifest's
    route: str | None = None  # `--route`: online or batch, over the manifest's
    wait: bool = True  # `--no-wait`: a batch run exits once its shards are created
    finish_online_after_s: float | None = None  # `--finish-online-after`: cancel batches not done by then
    staging: str | None = None  # `--staging`: where batch files are staged (gs://BUCKET/PREFIX), over the manifest's


@dataclass
class RunSummary:
    result: RunResult
    summary: dict[str, Any]
    resume_hint: str
    retry_hint: str = ""

    @property
    def budget_message(self) -> str:
        """The line a run the budget stopped ends on."""
        head = self.summary
        return (
            f"budget reached (${head['cost_usd']} spent of ${head['budget_usd']}); {self.result.left} tasks left to do"
        )

    @property
    def exit_code(self) -> ExitCode:
        r = self.result
        if r.reason == StopReason.FATAL and r.error is not None:
            return r.error.exit_code
        if r.reason == StopReason.INTERRUPTED:
            return ExitCode.INTERRUPTED
        if r.reason == StopReason.BUDGET:
            return ExitCode.BUDGET
        if r.reason == StopReason.SUBMITTED:  # the batch route's `--no-wait`
            return ExitCode.SUBMITTED
        # exit 0 only when every task succeeded: not while another provider still holds some
        return ExitCode.FAILED if self.summary["failed"] or r.elsewhere else ExitCode.OK


def _priced(batches: Iterator[list[ImportRow]], override: Decimal | None, provider: str) -> Iterator[list[ImportRow]]:
    """Refuse, before anything is committed, a model nobody has priced."""
    known: set[str] = set()
    for batch in batches:
        for model in {row[4] for row in batch} - known:
            image_price(provider, "online", model, override)
            known.add(model)
        yield batch


def loaded(manifest: str | Manifest) -> Manifest:
    """A manifest's path loaded and checked, or a manifest already loaded (tasks given in code) as it is."""
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


async def dry_run(manifest_path: str | Manifest, db: str | None, price: Decimal | None, *,
                  use_cache: bool = True) -> Estimate:  # fmt: skip
    """`batcher estimate`: no network, and nothing written (an absent store is not even created)."""
    manifest = loaded(manifest_path)
    override = price if price is not None else manifest.settings.price_usd
    done: set[str] = set()
    cached: Callable[[str], bool] | None = None
    if (store := await store_to_read(db)) is not None:
        try:
            job = await store.find_job(manifest.settings.name)
            if job is not None:
                done = await store.succeeded_keys(job.id)
            if use_cache:
                cached = cache_forecast(await store.outputs_by_key(None if job is None else job.id))
        finally:
            await store.close()
    provider = manifest.settings.provider
    return estimate(manifest.settings.name, manifest.specs(), done, lambda m: image_price(provider, "online", m, override),
                    manifest.settings.budget_usd, cached, batch_price_of=batch_prices(manifest.settings),
                    route=manifest.settings.route)  # fmt: skip


async def store_to_read(db: str | None, *, required: bool = False) -> Store | None:
    """The store at `db` opened for reading (no migration), or None: no `db`, or a SQLite file not there (which
    is not created: a dry run writes nothing; `required`: StoreMissingError, naming the path)."""
    if db is None:
        return None
    try:
        return await Store.open(db, upgrade=False, create=False)
    except StoreMissingError:
        if required:
            raise
        return None


async def import_manifest(store: Store, manifest: Manifest, price: Decimal | None) -> ImportResult:
    s = manifest.settings
    extra = {"requests_per_second": s.requests_per_second, "max_in_flight": s.max_in_flight,
             "max_connections": s.max_connections, "max_attempts": s.max_attempts,
             "provider": s.provider, "route": s.route, "batch_max_requests": s.batch_max_requests,
             "batch_max_bytes": s.batch_max_bytes, "batch_create_grace_s": s.batch_create_grace_s,
             "batch_staging": s.batch_staging,
             "batch_price_usd": None if s.batch_price_usd is None else str(s.batch_price_usd)}  # fmt: skip
    override = price if price is not None else s.price_usd
    rows = _priced(import_rows(manifest), override, s.provider)
    return await store.import_manifest(s, str(manifest.path.absolute()), rows, extra=extra, now=time.time())


async def import_only(manifest_path: str, db: str, price: Decimal | None) -> ImportResult:
    """`batcher import`: stage a manifest's tasks in the store."""
    manifest = load_manifest(manifest_path)
    store = await Store.open(db)
    try:
        return await import_manifest(store, manifest, price)
    finally:
        await store.close()


def run_config(opts: RunOptions, job: Job, api: ApiSettings) -> RunConfig:
    """The command line over the job's settings (as its manifest gave them at the last import)."""
    s = job.settings
    budget = usd_to_micros(opts.max_cost) if opts.max_cost is not None else job.budget_micros
    retry = RetryPolicy()
    if (attempts := opts.max_attempts or s.get("max_attempts")) is not None:
        retry = replace(retry, max_attempts=int(attempts))
    rate = opts.rate if opts.rate is not None else s.get("requests_per_second")
    if (connections := opts.max_connections or s.get("max_connections")) is not None:
        api = replace(api, max_connections=int(connections))
        connections = int(connections)
    lease, heartbeat = lease_settings()
    return RunConfig(
        lease_s=lease,
        heartbeat_s=heartbeat,
        api=api,
        requests_per_second=None if rate is None else float(rate),
        max_in_flight=opts.max_in_flight or s.get("max_in_flight") or RunConfig.max_in_flight,
        retry=retry,
        on_unknown=opts.on_unknown,
        budget_micros=budget,
        use_cache=opts.use_cache,
        max_connections=connections,
    )


def output_dir(job: Job, out: str | None) -> str:
    """Where this process writes the job's files: `--out` (relative to the current folder), else the job's stored
    directory. Imports store it absolute; a store from before that may hold a relative one, which is taken
    relative to the job's manifest, as an import would resolve it now."""
    if out is not None:
        return out.rstrip("/") if storage.is_remote(out) else os.path.abspath(os.path.expanduser(out))
    if storage.is_remote(job.output_dir):
        return job.output_dir
    stored = os.path.expanduser(job.output_dir)
    return os.path.abspath(os.path.join(os.path.dirname(job.manifest), stored))


def job_prices(models: list[str], job: Job, override: Decimal | None, provider: str | None = None, *,
               route: str = "online", strict: bool = True) -> dict[str, int]:  # fmt: skip
    """Micro-dollars per image for each model of the job by `route`: the command line (`override`), else the
    manifest's price for that route (`price_usd`, `batch: price_usd`), else the table of the provider
    (`provider`, else the job's; by batch, the first provider with a batch mode when that one has none).
    `strict` False: a model with no price is left out."""
    if override is None:
        held = job.price_micros if route == "online" else None
        override = micros_to_usd(held) if held is not None else None
        if route == "batch":
            override = _decimal(job.settings.get("batch_price_usd"))
    name = connect.provider_name(provider, job.settings)
    name = batch_provider(name) if route == "batch" else name
    out: dict[str, int] = {}
    for m in models:
        try:
            out[m] = usd_to_micros(image_price(name, route, m, override))
        except BatcherError:
            if strict:
                raise
    return out


async def drive(store: Store, provider: Provider, job: Job, config: RunConfig, prices: dict[str, int],
                show_progress: Any = None) -> RunResult:  # fmt: skip
    runner = Runner(store, provider, job, config, prices)
    with _signals(runner):
        if show_progress is None:
            return await runner.run()
        async with show_progress(runner.progress):
            return await runner.run()


@contextlib.asynccontextmanager
async def connected(store: Store, opts: RunOptions, job: Job) -> AsyncIterator[tuple[Provider, RunConfig]]:
    """The job's provider (`--provider` over the manifest's), entered, with the run's settings and rate gate."""
    name = connect.provider_name(opts.provider, job.settings)
    async with connect.endpoint(name, emulate=opts.emulate, emulator=opts.emulator) as where:
        api = registered(name).api(where)
        config = run_config(opts, job, api)
        gate = await connect.rate_gate(store, config, name)
        try:
            async with connect.open_provider(where, config, gate) as provider:
                yield provider, config
        finally:
            await gate.close()


async def run_job(opts: RunOptions, *, show_progress: Any = None, manifest: Manifest | None = None) -> RunSummary:
    """`batcher run`: import the manifest (idempotently), then drive every task to a final state. `manifest`:
    one loaded already (tasks given in code), instead of `opts.manifest`'s file."""
    manifest = manifest or load_manifest(opts.manifest)
    if opts.staging:  # kept with the job, as the manifest's would be: `batcher cancel` and `work` find it there
        manifest = replace(manifest, settings=replace(manifest.settings, batch_staging=opts.staging))
    store = await Store.open(opts.db)
    try:
        job = (await import_manifest(store, manifest, opts.price)).job
        job = replace(job, output_dir=output_dir(job, opts.out))
        await objects.probe(job.output_dir)  # before any paid call: the bucket exists and takes writes
        prices = job_prices(await store.job_models(job), job, opts.price, opts.provider)
        if route_of(opts, job) == "batch":
            result, config = await run_batch(store, opts, job, show_progress)
        else:
            async with connected(store, opts, job) as (provider, config):
                result = await drive(store, provider, job, config, prices, show_progress)
        head = await job_summary(store, job, prices, budget_micros=config.budget_micros)
    finally:
        await store.close()
        await storage.close_all()  # the bucket clients of this loop (a caller's loop goes on: nothing left open)
    return RunSummary(result, head, _resume_hint(opts), retry_hint(opts, job.name))


def route_of(opts: RunOptions, job: Job) -> str:
    """`--route` over the manifest's `route`; batch needs a provider with a batch client."""
    route = opts.route or str(job.settings.get("route") or "online")
    if route == "batch" and registered(connect.provider_name(opts.provider, job.settings)).batch is None:
        name = batch_providers()[0]
        raise ConfigError(
            f"route batch needs provider {' or '.join(batch_providers())}: add `provider: {name}` to the manifest "
            f"or --provider {name}"
        )
    return route


def batch_provider(name: str) -> str:
    """`name` if it has a batch mode, else the first provider that has (a job's batch record stands there)."""
    return name if registered(name).batch is not None else batch_providers()[0]


async def run_batch(store: Store, opts: RunOptions, job: Job, show_progress: Any) -> tuple[RunResult, RunConfig]:
    """`run` by Batch Mode: plan, create and collect the job's shards; past `--finish-online-after`, cancel what
    is not done and finish those tasks online, through the same endpoint."""
    from batcher.runner.batch import BatchRunner, BatchSettings

    s = job.settings
    prices = job_prices(await store.job_models(job), job, opts.price, route="batch")
    deadline = None if opts.finish_online_after_s is None else time.time() + opts.finish_online_after_s
    grace = s.get("batch_create_grace_s")
    batch = BatchSettings(max_requests=_int(s.get("batch_max_requests")), max_bytes=_int(s.get("batch_max_bytes")),
                          wait=opts.wait, deadline_at=deadline,
                          create_grace_s=BatchSettings.create_grace_s if grace is None else float(grace))  # fmt: skip
    name = batch_provider(connect.provider_name(opts.provider, job.settings))
    open_batch = registered(name).batch
    assert open_batch is not None
    async with connect.endpoint(name, emulate=opts.emulate, emulator=opts.emulator, batch=True) as where:
        where = replace(where, staging=opts.staging or s.get("batch_staging") or where.staging)  # an emulator's last
        config = run_config(opts, job, ApiSettings())
        gate = await connect.rate_gate(store, config, name)
        try:
            async with open_batch(where, gate) as c:
                runner = BatchRunner(store, c, job, config, batch, prices)
                with _signals(runner):
                    if show_progress is None:
                        result = await runner.run()
                    else:
                        async with show_progress(runner.progress):
                            result = await runner.run()
            if result.reason == StopReason.DEADLINE:
                log.warning("the deadline passed: the tasks not done by batch now run online")
                online_prices = job_prices(await store.job_models(job), job, opts.price, name)
                async with connect.open_provider(where, config, gate) as provider:
                    result = await drive(store, provider, job, config, online_prices, show_progress)
        finally:
            await gate.close()
    return result, config


async def cancel_batches(db: str, job_name: str) -> list[ShardCancel]:
    """`batcher cancel JOB`: cancel the job's batches not collected; what happened to each shard. A batch that
    finished lines keeps them billed: its shard stays open for a run to collect them."""
    from batcher.ratelimit import RateGate
    from batcher.runner.batch import cancel_shards

    store = await Store.open(db, create=False)
    try:
        job = await store.job(job_name)
        # each open shard through the provider that created it (a run's --provider need not be the manifest's)
        names = list(dict.fromkeys(s.provider for s in await store.shards_open(job)))
        names = names or [batch_provider(connect.provider_name(None, job.settings))]
        gate = RateGate(None)
        done: list[ShardCancel] = []
        try:
            for name in names:
                entry = registered(name)
                assert entry.batch is not None
                where = replace(entry.real(), staging=job.settings.get("batch_staging"))
                async with entry.batch(where, gate) as client:
                    done += await cancel_shards(store, client, job, "cancelled with `batcher cancel`", time.time())
            return done
        finally:
            await gate.close()
    finally:
        await store.close()


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def _decimal(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


async def work(opts: RunOptions, names: tuple[str, ...], *, forever: bool = False,
               show_progress: Any = None) -> list[RunSummary]:  # fmt: skip
    """`batcher work`: drain the named jobs (or every job) with open tasks, one after another, alongside any
    number of other workers on the same store. With `forever`, wait for new work instead of stopping. Each job
    is driven through its own provider."""
    store = await Store.open(opts.db)
    try:
        await _any_job(store, names)
        done: list[RunSummary] = []
        spent: set[str] = set()  # jobs whose budget stopped this worker: not driven again, so no turn writes
        # jobs whose open tasks all wait on another process (an online run, another provider): not driven
        # again before this, so a turn never spins writing a worker row for nothing
        waiting: dict[str, float] = {}
        while True:
            ran = False
            for job in await _jobs(store, names):
                if job.name in spent or waiting.get(job.name, 0.0) > time.time():
                    continue
                if (await store.next_due(job, time.time()))[0] == 0:
                    continue
                ran = True
                job = replace(job, output_dir=output_dir(job, opts.out))
                await objects.probe(job.output_dir)
                prices = job_prices(await store.job_models(job), job, opts.price, opts.provider)
                if route_of(opts, job) == "batch":  # a batch job is never run online by surprise
                    result, config = await run_batch(store, opts, job, show_progress)
                else:
                    async with connected(store, opts, job) as (provider, config):
                        result = await drive(store, provider, job, config, prices, show_progress)
                head = await job_summary(store, job, prices, budget_micros=config.budget_micros)
                done.append(RunSummary(result, head, _resume_hint(opts), retry_hint(opts, job.name)))
                if result.reason in (StopReason.INTERRUPTED, StopReason.FATAL):
                    return done
                if result.reason == StopReason.BUDGET:
                    spent.add(job.name)
                if result.reason == StopReason.DONE and result.elsewhere:  # due only when the other side ends
                    waiting[job.name] = time.time() + WORK_IDLE_S
            if not ran and not forever:
                return done
            if not ran:  # to the time a waiting job is looked at again, at most WORK_IDLE_S
                soonest = min(waiting.values(), default=time.time() + WORK_IDLE_S)
                await asyncio.sleep(min(WORK_IDLE_S, max(0.05, soonest - time.time())))
    finally:
        await store.close()
        await storage.close_all()


async def _jobs(store: Store, names: tuple[str, ...]) -> list[Job]:
    return [await store.job(n) for n in names] if names else await store.jobs()


async def _any_job(store: Store, names: tuple[str, ...]) -> Job:
    jobs = await _jobs(store, names)
    if not jobs:
        raise BatcherError("no jobs in the store: import one with `batcher import MANIFEST` or `batcher run`")
    return jobs[0]


async def job_summary(
    store: Store, job: Job, prices: dict[str, int] | None = None, *, budget_micros: int | None = None
) -> dict[str, Any]:
    """The job's summary; `budget_micros`: the budget this run held to (`--max-cost`), else the manifest's."""
    models = await store.job_models(job)
    if prices is None:
        prices = job_prices(models, job, None, strict=False)
    batch = job_prices(models, job, None, route="batch", strict=False)
    head = summary(job, await store.ledger(job), prices, budget_micros=budget_micros, batch_unit_micros=batch)
    head["cached"] = await store.cached_count(job)  # succeeded without an API call
    return head


def retry_hint(opts: RunOptions, job: str) -> str:
    """The command that puts a job's failed tasks back to work, for the line a run with failures ends on."""
    return " ".join(["batcher retry", job] + (["--db", opts.db] if opts.db != "batcher.db" else []))


def _resume_hint(opts: RunOptions) -> str:
    parts = ["batcher run", opts.manifest] if opts.manifest else ["batcher work"]
    if opts.db != "batcher.db":
        parts += ["--db", opts.db]
    if opts.out is not None:
        parts += ["--out", opts.out]
    if opts.provider is not None:
        parts += ["--provider", opts.provider]
    if opts.route is not None:
        parts += ["--route", opts.route]
    if opts.emulate:
        parts.append("--emulate")
    if not opts.use_cache:
        parts.append("--no-cache")
    return " ".join(parts)


@contextlib.contextmanager
def _signals(runner: Stoppable) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: stop gracefully. A second Ctrl-C: leave at once (the store stays consistent:
    every change is one committed transaction, and an interrupted create is found `unknown` on resume)."""
    if (hook := STOP_HOOK.get()) is not None:
        hook(runner)
        yield
        return
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal(signum: int) -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            os._exit(ExitCode.INTERRUPTED)
        name = signal.Signals(signum).name
        os.write(2, f"\n{name}: stopping; creates on the wire are being recorded (Ctrl-C again to quit now)\n".encode())
        runner.request_stop()

    installed: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_signal, sig)
            installed[sig] = previous
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for signum, previous in installed.items():
            loop.remove_signal_handler(signum)
            # asyncio resets SIGTERM to the default action, which would kill the process while it writes the
            # summary; hand the signal back to whoever had it (the CLI turns it into exit 130)
            signal.signal(signum, previous)


# --- cache and chains -------------------------------------------------------------------------------------


def cache_forecast(outputs: dict[str, list[tuple[str, int | None]]]) -> Callable[[str], bool]:
    """Whether a finished output of a key is still on disk with its recorded size (the run itself checks the
    sha256 too, so a corrupted file there becomes a new generation after all). One in a bucket is not looked
    at (estimates use no network): it counts as not there, so the estimate errs toward paying."""

    def cached(key: str) -> bool:
        for path, size in outputs.get(key, ()):
            with contextlib.suppress(OSError):
                if size is None or os.stat(path).st_size == size:
                    return True
        return False

    return cached
