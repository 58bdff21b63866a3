"""The account-wide rate limit: a token bucket whose clock is passed in."""

from __future__ import annotations

import math


class TokenBucket:
    """`rate` tokens per second into a bucket of `capacity`; a request takes one token or is refused.

    Invariant: in any window of T seconds at most ``capacity + rate * T`` requests are admitted.
    """

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity  # starts full
        self._stamp = now

    def take(self, now: float) -> float:
        """Take a token at `now`. Returns 0.0 if admitted, else the seconds until a token is due."""
        # max(): a clock read by a concurrent caller a moment earlier must not drain the bucket.
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._stamp = max(self._stamp, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def retry_after_seconds(wait_s: float) -> int:
    """Whole seconds a client must wait, rounded up so that waiting that long is always enough."""
    return max(1, math.ceil(wait_s))
