"""When to try again: pure decisions, time passed in."""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass

RETRY_AFTER_CAP_S = 3600.0  # a Retry-After further out than this is treated as this


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # creates sent for one task (a create refused with 429 is not counted)
    max_generation_failures: int = 2  # `Failed`/`Cancelled` generations retried this many times, then fail
    base_s: float = 1.0  # backoff base, seconds
    cap_s: float = 60.0  # longest backoff, seconds
    max_download_failures: int = 10  # broken downloads of one finished generation before failing the task
    max_blocked_retries: int = 0  # a prompt the model declined (IMAGE_SAFETY...) is declined again: not retried


def backoff_s(failures: int, policy: RetryPolicy, rnd: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))).

    `rnd` is a uniform draw in [0, 1) supplied by the caller, so the decision stays pure.
    """
    if failures <= 0:
        return 0.0
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** min(failures - 1, 60))
    return rnd * ceiling


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """`Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP date → seconds to wait from now."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now_epoch
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)
