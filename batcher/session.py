"""One command's work, between the CLI and the layers below: import a manifest, connect, drive, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from batcher.client import ApiClient, ApiSettings
from batcher.config import RunConfig, api_key, api_settings, micros, unit_price
from batcher.emulator import Emulator, EmulatorConfig, Latency
from batcher.errors import EXIT_BUDGET, EXIT_FAILED_TASKS, EXIT_INTERRUPTED, EXIT_OK, BatcherError
from batcher.estimate import Estimate, estimate
from batcher.manifest import Manifest, load_manifest
from batcher.models import OnUnknown, TaskSpec
from batcher.ratelimit import RateGate
from batcher.report import summary
from batcher.retry import RetryPolicy
from batcher.store import ImportResult, Job, Store
from batcher.worker import Runner, RunResult, StopReason

DEMO_LATENCY = Latency("uniform", 0.3, 1.5)  # the in-process emulator of `run --emulate`, seconds


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


@dataclass
class RunSummary:
    result: RunResult
    summary: dict[str, Any]
    resume_hint: str

    @property
    def exit_code(self) -> int:
        r = self.result
        if r.reason == StopReason.FATAL and r.error is not None:
            return r.error.exit_code
        if r.reason == StopReason.INTERRUPTED:
            return EXIT_INTERRUPTED
        if r.reason == StopReason.BUDGET:
            return EXIT_BUDGET
        return EXIT_FAILED_TASKS if self.summary["failed"] else EXIT_OK


def _priced(specs: Iterator[TaskSpec], override: Decimal | None) -> Iterator[TaskSpec]:
    """Refuse, before anything is written, a model nobody has priced."""
    known: set[str] = set()
    for spec in specs:
        if spec.model not in known:
            unit_price(spec.model, override)
            known.add(spec.model)
        yield spec


async def dry_run(manifest_path: str, db: str | None, price: Decimal | None) -> Estimate:
    """`batcher estimate`: no network, and nothing written (an absent store is not even created)."""
    manifest = load_manifest(manifest_path)
    override = price if price is not None else manifest.settings.price_usd
    done: set[str] = set()
    if db is not None and (("://" in db) or os.path.exists(db)):
        store = await Store.open(db, upgrade=False)
        try:
            job = await store.find_job(manifest.settings.name)
            if job is not None:
                done = await store.succeeded_keys(job.id)
        finally:
            await store.close()
    return estimate(manifest.settings.name, manifest.specs(), done, lambda m: unit_price(m, override),
                    manifest.settings.budget_usd)  # fmt: skip


async def import_manifest(store: Store, manifest: Manifest, price: Decimal | None) -> ImportResult:
    s = manifest.settings
    extra = {"requests_per_second": s.requests_per_second, "max_in_flight": s.max_in_flight,
             "max_attempts": s.max_attempts}  # fmt: skip
    override = price if price is not None else s.price_usd
    return await store.import_manifest(s, str(manifest.path), _priced(manifest.specs(), override), extra=extra,
                                       now=time.time())  # fmt: skip


async def import_only(manifest_path: str, db: str, price: Decimal | None) -> ImportResult:
    """`batcher import`: stage a manifest's tasks in the store."""
    manifest = load_manifest(manifest_path)
    store = await Store.open(db)
    try:
        return await import_manifest(store, manifest, price)
    finally:
        await store.close()


def run_config(opts: RunOptions, manifest: Manifest, api: ApiSettings) -> RunConfig:
    s = manifest.settings
    budget = opts.max_cost if opts.max_cost is not None else s.budget_usd
    retry = RetryPolicy()
    if (attempts := opts.max_attempts or s.max_attempts) is not None:
        retry = replace(retry, max_attempts=attempts)
    return RunConfig(
        api=api,
        requests_per_second=opts.rate if opts.rate is not None else s.requests_per_second,
        max_in_flight=opts.max_in_flight or s.max_in_flight or RunConfig.max_in_flight,
        retry=retry,
        on_unknown=opts.on_unknown,
        budget_micros=None if budget is None else micros(budget),
    )


@contextlib.asynccontextmanager
async def api_endpoint(opts: RunOptions) -> AsyncIterator[tuple[ApiSettings, str]]:
    """The real API from the environment, or an in-process emulator on loopback with `--emulate`."""
    if not opts.emulate:
        yield api_settings(), api_key()
        return
    async with Emulator(opts.emulator) as emu:
        yield api_settings(base_url=emu.base_url), emu.api_key


async def run_job(opts: RunOptions, *, show_progress: Any = None) -> RunSummary:
    """`batcher run`: import the manifest (idempotently), then drive every task to a final state."""
    manifest = load_manifest(opts.manifest)
    store = await Store.open(opts.db)
    try:
        imported = await import_manifest(store, manifest, opts.price)
        job = imported.job
        override = opts.price if opts.price is not None else manifest.settings.price_usd
        prices = {m: micros(unit_price(m, override)) for m in await store.job_models(job)}
        async with api_endpoint(opts) as (api, key):
            config = run_config(opts, manifest, api)
            gate = RateGate(config.requests_per_second)
            async with ApiClient(api, key, gate) as client:
                runner = Runner(store, client, job, config, prices)
                with _signals(runner):
                    if show_progress is not None:
                        async with show_progress(runner.progress):
                            result = await runner.run()
                    else:
                        result = await runner.run()
        head = await job_summary(store, job, prices)
    finally:
        await store.close()
    return RunSummary(result, head, _resume_hint(opts))


async def job_summary(store: Store, job: Job, prices: dict[str, int] | None = None) -> dict[str, Any]:
    if prices is None:
        override = None if job.price_micros is None else Decimal(job.price_micros) / 1_000_000
        prices = {}
        for m in await store.job_models(job):
            with contextlib.suppress(BatcherError):
                prices[m] = micros(unit_price(m, override))
    return summary(job, await store.ledger(job), prices)


def _resume_hint(opts: RunOptions) -> str:
    parts = ["batcher run", opts.manifest]
    if opts.db != "batcher.db":
        parts += ["--db", opts.db]
    if opts.emulate:
        parts.append("--emulate")
    return " ".join(parts)


@contextlib.contextmanager
def _signals(runner: Runner) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: stop gracefully. A second Ctrl-C: leave at once (the store stays consistent:
    every change is one committed transaction, and an interrupted create is found `unknown` on resume)."""
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal(signum: int) -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            os._exit(EXIT_INTERRUPTED)
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
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            # asyncio resets SIGTERM to the default action, which would kill the process while it writes the
            # summary; hand the signal back to whoever had it (the CLI turns it into exit 130)
            signal.signal(sig, previous)
