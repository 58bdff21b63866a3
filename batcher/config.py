"""Run settings: command line over manifest over environment over defaults. Pure: the environment is passed in."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from batcher.catalog import DEFAULT_PROVIDER, provider_facts
from batcher.errors import ConfigError, UnknownPriceError
from batcher.models import JobSettings, OnUnknown
from batcher.polling import PollPolicy
from batcher.retry import RetryPolicy

DEFAULT_DB = "batcher.db"
DEFAULT_BASE_URL = "https://api.linkmodel.ai/api/v1"
API_KEY_ENV = "LINKMODEL_API_KEY"  # the only place the key is read from
DEFAULT_MAX_IN_FLIGHT = 256  # tasks between create and download at once: enough to keep a rate limit busy
LEASE_S = 30.0  # a claim not renewed for this long is taken over (procrastinate: 30 s of silence)
HEARTBEAT_S = 10.0
LEASE_ENV = "BATCHER_LEASE_S"  # overrides LEASE_S; the heartbeat then beats three times per lease


def lease_settings(env: Mapping[str, str] = os.environ) -> tuple[float, float]:
    """(lease, heartbeat) in seconds: how long a silent worker's tasks stay its own, and how often it renews."""
    raw = env.get(LEASE_ENV)
    if raw is None:
        return LEASE_S, HEARTBEAT_S
    try:
        lease = float(raw)
    except ValueError:
        lease = -1.0
    if not 0.3 <= lease <= 86_400:
        raise ConfigError(f"{LEASE_ENV} must be a number of seconds between 0.3 and 86400, not {raw!r}")
    return lease, lease / 3


def db_from(option: str | None, env: Mapping[str, str] = os.environ) -> str:
    return option or env.get("BATCHER_DB") or DEFAULT_DB


def image_price(provider: str, route: str, model: str, override: Decimal | None = None) -> Decimal:
    """The price of one image of `model` through `provider` by `route` ("online" or "batch"): `override` (the
    command line's or the manifest's price for that route) when given, else the provider's table. The one place
    a price is worked out: estimate, diff, run, report and retry all ask it.

    A batch price comes from `batch: price_usd` or the table, never from the online `price_usd` halved: a user
    who negotiated an online price has not told us what a batch costs. UnknownPriceError when neither says."""
    if override is not None:
        return override
    table = provider_facts(provider)
    facts = table.model(model)
    if route == "batch":
        if facts is None or facts.batch_price_usd is None:
            why = "has no batch mode" if not table.batch_mode else f"publishes no batch price for model {model!r}"
            raise UnknownPriceError(
                f"no batch price is known: {table.label} {why}; set batch.price_usd in the manifest"
            )
        return facts.batch_price_usd
    if facts is None or facts.price_usd is None:
        raise UnknownPriceError(
            f"no price is known for model {model!r}: set price_usd in the manifest or --price on the command line"
        )
    return facts.price_usd


def unit_price(model: str, override: Decimal | None, provider: str = DEFAULT_PROVIDER) -> Decimal:
    """The online price of one successful call (see `price`)."""
    return image_price(provider, "online", model, override)


def batch_unit_price(model: str, override: Decimal | None, provider: str = DEFAULT_PROVIDER) -> Decimal:
    """The price of one image by the provider's batch mode (see `price`)."""
    return image_price(provider, "batch", model, override)


def batch_prices(settings: JobSettings) -> Callable[[str], Decimal] | None:
    """A model's batch price for the job (see batch_unit_price), or None: its provider has no batch mode."""
    if not provider_facts(settings.provider).batch_mode:
        return None
    override, provider = settings.batch_price_usd, settings.provider
    return lambda model: image_price(provider, "batch", model, override)


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = DEFAULT_BASE_URL
    images_field: str = "images"  # the edit request's field for input images, our choice (env LINKMODEL_IMAGES_FIELD)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    total_timeout_s: float = 120.0
    max_connections: int = 32
    max_image_bytes: int = 40 << 20  # a 4K PNG is well under this; anything larger is not an image


@dataclass(frozen=True)
class RunConfig:
    api: ApiSettings = field(default_factory=ApiSettings)
    requests_per_second: float | None = None  # None: no client-side limit (429s still pause the pool)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    on_unknown: OnUnknown = OnUnknown.RESUBMIT
    budget_micros: int | None = None
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S
    use_cache: bool = True  # reuse a finished output of the same spec (`--no-cache`: never)
    max_connections: int | None = None  # the user's cap on open connections, for any provider

    def __post_init__(self) -> None:
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ConfigError("the request rate must be a positive number of requests per second")
        if self.max_in_flight < 1:
            raise ConfigError("--max-in-flight must be at least 1")
        if self.budget_micros is not None and self.budget_micros < 0:
            raise ConfigError("the budget cannot be negative")


def api_settings(env: Mapping[str, str] = os.environ, base_url: str | None = None) -> ApiSettings:
    url = base_url or env.get("LINKMODEL_BASE_URL") or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"LINKMODEL_BASE_URL must be an http(s) URL, not {url!r}")
    return ApiSettings(base_url=url, images_field=env.get("LINKMODEL_IMAGES_FIELD", "images"))


def api_key(env: Mapping[str, str] = os.environ) -> str:
    key = env.get(API_KEY_ENV, "").strip()
    if not key:
        raise ConfigError(
            "no API key: set LINKMODEL_API_KEY, or add --emulate to rehearse against the built-in emulator"
        )
    return key
