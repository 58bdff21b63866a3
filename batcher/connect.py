"""Which API a run speaks to: its provider with the key and base URL from the environment, or an in-process
emulator of that provider on loopback (`--emulate`); and the request rate every worker of the account shares."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from batcher.catalog import DEFAULT_PROVIDER, provider_facts
from batcher.config import RunConfig, api_key, api_settings
from batcher.emulator import EmulatorConfig, Latency
from batcher.errors import BatcherError
from batcher.providers.base import Provider
from batcher.ratelimit import AdaptiveRate, RateGate
from batcher.runner import rate_limit_key
from batcher.store import Store

REHEARSAL_BATCH_LATENCY = Latency("uniform", 3.0, 8.0)  # `--emulate --route batch`: from create to done, seconds
ACCOUNT_BUCKET = "account"  # the shared token bucket's name (for LinkModel; others add their name)


@dataclass(frozen=True)
class Endpoint:
    """Where a provider's API is: its base URL and the key (kept out of every record and message)."""

    provider: str
    base_url: str | None  # None: the provider's own default (or its environment variable)
    key: str

    def __repr__(self) -> str:  # the key never shows, not even in a traceback's locals
        return f"Endpoint(provider={self.provider!r}, base_url={self.base_url!r})"


def provider_name(option: str | None, settings: dict[str, object]) -> str:
    """The command line's `--provider`, else the job's manifest, else LinkModel."""
    return provider_facts(option or str(settings.get("provider") or DEFAULT_PROVIDER)).name


@contextlib.asynccontextmanager
async def endpoint(
    provider: str, *, emulate: bool, emulator: EmulatorConfig, batch: bool = False
) -> AsyncIterator[Endpoint]:
    """The real API from the environment, or an in-process emulator on loopback with `--emulate`."""
    if provider == "gemini":
        from batcher.providers.gemini_settings import gemini_api_key, gemini_settings

        if not emulate:
            yield Endpoint(provider, gemini_settings(os.environ).base_url, gemini_api_key(os.environ))
            return
        from batcher.emulator.gemini.config import GeminiConfig  # the server: only for --emulate
        from batcher.emulator.gemini.server import GeminiEmulator

        config = GeminiConfig(latency=emulator.latency)
        if batch:  # a rehearsal's batches end within seconds, not the real service's minutes to hours
            config = config.replace(batch_latency=REHEARSAL_BATCH_LATENCY)
        async with GeminiEmulator(config) as gemini:
            yield Endpoint(provider, gemini.origin, gemini.api_key)
        return
    if not emulate:
        yield Endpoint(provider, api_settings().base_url, api_key())
        return
    from batcher.emulator import Emulator  # the server, and aiohttp's web side with it: only for --emulate

    async with Emulator(emulator) as emu:
        yield Endpoint(provider, emu.base_url, emu.api_key)


def open_provider(where: Endpoint, config: RunConfig, gate: RateGate) -> Provider:
    """The provider for `where`, to be entered (`async with`): it owns its HTTP session."""
    if where.provider == "gemini":
        from batcher.providers.gemini import GeminiProvider
        from batcher.providers.gemini_settings import gemini_settings

        settings = gemini_settings(os.environ, base_url=where.base_url)
        if config.max_connections is not None:
            settings = replace(settings, max_connections=config.max_connections)
        return GeminiProvider(settings, where.key, gate)
    from batcher.providers.linkmodel import LinkModelProvider

    api = replace(config.api, base_url=where.base_url) if where.base_url else config.api
    if config.max_connections is not None:
        api = replace(api, max_connections=config.max_connections)
    return LinkModelProvider(api, where.key, gate)


class StoreBucket:
    """The account's rate as a token bucket in the store, shared by every worker (PostgreSQL)."""

    HOLD_CUT = 0.9  # a 429 cuts the shared rate by this factor

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name

    async def take(self) -> float:
        return await self.store.bucket_take(self.name)

    async def hold(self, seconds: float) -> None:
        with contextlib.suppress(BatcherError):
            await self.store.bucket_hold(self.name, seconds, self.HOLD_CUT)


async def rate_gate(store: Store, config: RunConfig, provider: str = DEFAULT_PROVIDER) -> RateGate:
    """The request rate: configured, or learned by an earlier run, or found from 429s. On PostgreSQL a known
    rate is one token bucket in the database that every worker on any machine draws from. Each provider's
    account has its own."""
    learned = (await store.learned()).get(rate_limit_key(provider))
    control = AdaptiveRate.start(config.requests_per_second, learned)
    shared = None
    known = config.requests_per_second or learned
    if store.dialect == "postgresql" and known:
        name = ACCOUNT_BUCKET if provider == DEFAULT_PROVIDER else f"{ACCOUNT_BUCKET}:{provider}"
        await store.bucket_setup(name, float(known), capacity=1.0)
        shared = StoreBucket(store, name)
    return RateGate(control, shared)
