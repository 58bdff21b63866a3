"""Driving the real runner against a real emulator, without the manifest layer."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from batcher.config import RunConfig
from batcher.emulator import Emulator
from batcher.models import JobSettings, TaskSpec, import_batches
from batcher.polling import PollPolicy
from batcher.providers.linkmodel import LinkModelProvider
from batcher.ratelimit import RateGate
from batcher.retry import RetryPolicy
from batcher.runner import Runner, RunResult
from batcher.store import Store

MODEL = "gemini-3.1-flash-lite-image"
PRICE = 67_000  # micro-dollars
FAST_POLL = PollPolicy(initial_s=0.05, growth=1.5, max_interval_s=0.3, give_up_s=60.0)
FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.05)


def specs(n: int, prefix: str = "prompt", size: str = "1x1") -> list[TaskSpec]:
    return [TaskSpec(MODEL, f"{prefix} {i}", "1K", size, f"{prefix}-{i}.png", source=f"t:{i}") for i in range(n)]


async def load(store: Store, items: list[TaskSpec], out: Path, name: str = "job") -> None:
    await store.import_manifest(JobSettings(name, str(out)), "test", import_batches(items), extra={}, now=time.time())


def fast_config(**changes: Any) -> RunConfig:
    return replace(RunConfig(poll=FAST_POLL, retry=FAST_RETRY, heartbeat_s=0.5), **changes)


async def drive(store: Store, emu: Emulator, config: RunConfig | None = None, *, key: str | None = None,
                name: str = "job", runner_out: list[Runner] | None = None) -> RunResult:  # fmt: skip
    config = config or fast_config()
    api = replace(config.api, base_url=emu.base_url, read_timeout_s=2.0, total_timeout_s=5.0)
    config = replace(config, api=api)
    job = await store.job(name)
    async with LinkModelProvider(api, key or emu.api_key, RateGate(config.requests_per_second)) as provider:
        runner = Runner(store, provider, job, config, {MODEL: PRICE})
        if runner_out is not None:
            runner_out.append(runner)
        return await runner.run()
