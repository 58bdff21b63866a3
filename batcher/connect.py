"""Which API a run speaks to: its provider with the key and base URL from the environment, or an in-process
emulator of that provider on loopback (`--emulate`); and the request rate every worker of the account shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from batcher.catalog import DEFAULT_PROVIDER, provider_facts
from batcher.config import RunConfig
from batcher.emulator import EmulatorConfig
from batcher.errors import BatcherError
from batcher.providers.base import Provider
from batcher.providers.registry import Endpoint, registered
from batcher.ratelimit import AdaptiveRate, RateGate
from batcher.runner import rate_limit_key
from batcher.store import Store

__all__ = ["Endpoint", "endpoint", "open_provider", "provider_name", "rate_gate"]

ACCOUNT_BUCKET = "account"  # the shared token bucket's name (ProviderFacts.account_key adds the provider's)


def provider_name(option: str | None, settings: dict[str, object]) -> str:
    """The command line's `--provider`, else the job's manifest, else LinkModel."""
    return provider_facts(option or str(settings.get("provider") or DEFAULT_PROVIDER)).name


@contextlib.asynccontextmanager
async def endpoint(
    provider: str, *, emulate: bool, emulator: EmulatorConfig, batch: bool = False
) -> AsyncIterator[Endpoint]:
    """The real API from the environment, or an in-process emulator on loopback with `--emulate`."""
    entry = registered(provider)
    if not emulate:
        yield entry.real()
        return
    async with entry.emulated(emulator, batch) as where:
        yield where


def open_provider(where: Endpoint, config: RunConfig, gate: RateGate) -> Provider:
    """The provider for `where`, to be entered (`async with`): it owns its HTTP session."""
    return registered(where.provider).online(where, config, gate)


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
        name = provider_facts(provider).account_key(ACCOUNT_BUCKET)
        await store.bucket_setup(name, float(known), capacity=1.0)
        shared = StoreBucket(store, name)
    return RateGate(control, shared)
