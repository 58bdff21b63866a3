"""What both emulators' knobs and state share: a frozen config changed by `replace`, and a state holding the
seeded random source every draw comes from and the account's token bucket, rebuilt when their knobs change."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, Self, TypeVar

from batcher.emulator.limiter import TokenBucket

STARTUP_ONLY = frozenset({"host", "port"})  # knobs fixed when the server starts


class Knobs(Protocol):
    @property
    def seed(self) -> int: ...

    @property
    def rate_limit(self) -> float | None: ...

    @property
    def bucket_size(self) -> float: ...

    def replace(self, **knobs: Any) -> Self: ...


C = TypeVar("C", bound=Knobs)


def replaced(config: Any, knobs: dict[str, Any], coerce: Callable[[str, Any], Any]) -> Any:
    """A copy of a dataclass config with some knobs changed, each coerced from its JSON-ish form."""
    unknown = set(knobs) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise ValueError(f"unknown knob(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **{k: coerce(k, v) for k, v in knobs.items()})


def bucket_size(burst: float | None, rate_limit: float | None) -> float:
    """Tokens in a full bucket: the burst, else one second's worth (at least 1)."""
    return burst if burst is not None else max(1.0, rate_limit or 1.0)


class SeededState(Generic[C]):
    """Config, the seeded random source and the token bucket; subclasses add what their API keeps."""

    config: C
    rng: random.Random
    _bucket: TokenBucket | None

    def _reseed(self, now: float) -> None:
        self.rng = random.Random(self.config.seed)
        self._bucket = self._new_bucket(now)

    def configure(self, now: float, **knobs: Any) -> C:
        """Change knobs at run time; raises ValueError for unknown, invalid or startup-only ones."""
        fixed = STARTUP_ONLY & set(knobs)
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot change while the server runs")
        old = self.config
        self.config = old.replace(**knobs)
        if (old.rate_limit, old.bucket_size) != (self.config.rate_limit, self.config.bucket_size):
            self._bucket = self._new_bucket(now)
        if old.seed != self.config.seed:
            self.rng = random.Random(self.config.seed)
        self._configured()
        return self.config

    def _configured(self) -> None:
        """After a change of knobs: what a subclass keeps in step with them."""

    def _new_bucket(self, now: float) -> TokenBucket | None:
        if self.config.rate_limit is None:
            return None
        return TokenBucket(self.config.rate_limit, self.config.bucket_size, now)

    def admit(self, now: float) -> float:
        """Rate-limit one API request: 0.0 if admitted, else seconds until a token is due."""
        return 0.0 if self._bucket is None else self._bucket.take(now)

    def roll(self, rate: float) -> bool:
        """True with probability `rate`. A zero rate draws nothing, so unused knobs leave sequences alone."""
        return rate > 0.0 and self.rng.random() < rate


def check_ranges(config: Any, rates: Iterable[str], numbers: Iterable[str]) -> None:
    """What every emulator's config checks on creation: probabilities in [0, 1], other numbers finite and >= 0
    (None allowed), and a rate limit with its burst that can admit a request. Errors are ValueError."""
    for name in rates:
        rate = getattr(config, name)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {rate}")
    for name in numbers:
        value = getattr(config, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if config.rate_limit is not None and config.rate_limit <= 0:
        raise ValueError("rate_limit must be > 0 requests/s (None turns it off)")
    if config.burst is not None and config.burst < 1:
        raise ValueError("burst must be at least 1 token")
