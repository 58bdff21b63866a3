"""When to poll a submitted task next: a pure function of how long it has run and what the run has seen.

Every poll costs a request against the account's rate limit, so polls aim where generations actually end:
with enough observed completions, at the quantiles of their latency; before that, on a gentle backoff.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

POLL_FLOOR_S = 0.25  # never poll one task more often than this, seconds
QUANTILES = (0.5, 0.8, 0.95, 0.99)  # poll targets once the latency distribution is known
MIN_SAMPLES = 8  # completions seen before their distribution is trusted
MAX_SAMPLES = 2048  # newest completions kept


@dataclass(frozen=True)
class PollPolicy:
    initial_s: float = 2.0  # first poll after a create when nothing is known yet, seconds
    factor: float = 1.5  # backoff between later polls
    max_interval_s: float = 10.0
    give_up_s: float = 900.0  # a generation still running after this is failed (LinkModel's client: 15 min)


class LatencyStats:
    """Completion latencies seen in this run (seconds from accepted create to seeing `Success`)."""

    __slots__ = ("_recent", "_sorted")

    def __init__(self, samples: Iterable[float] = ()) -> None:
        self._recent: list[float] = []
        self._sorted: list[float] = []
        for s in samples:
            self.add(s)

    def add(self, seconds: float) -> None:
        if len(self._recent) >= MAX_SAMPLES:
            old = self._recent.pop(0)
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(seconds)
        bisect.insort(self._sorted, seconds)

    def __len__(self) -> int:
        return len(self._sorted)

    def quantile(self, q: float) -> float:
        if not self._sorted:
            raise ValueError("no samples")
        i = min(len(self._sorted) - 1, max(0, round(q * (len(self._sorted) - 1))))
        return self._sorted[i]

    def samples(self) -> list[float]:
        return list(self._recent)


def next_poll_in(elapsed_s: float, polls: int, stats: LatencyStats | None, policy: PollPolicy) -> float | None:
    """Seconds from now until the next poll of a task created `elapsed_s` ago and polled `polls` times;
    None when it has run too long and should be given up."""
    if elapsed_s >= policy.give_up_s:
        return None
    if stats is not None and len(stats) >= MIN_SAMPLES:
        for q in QUANTILES:
            target = stats.quantile(q)
            if target > elapsed_s + POLL_FLOOR_S:
                return _capped(target - elapsed_s, elapsed_s, policy)
        # past every quantile: a straggler, back off from its age
        return _capped(max(POLL_FLOOR_S, elapsed_s * (policy.factor - 1.0)), elapsed_s, policy)
    if polls == 0:
        return _capped(max(policy.initial_s - elapsed_s, 0.0), elapsed_s, policy)
    return _capped(policy.initial_s * policy.factor**polls, elapsed_s, policy)


def _capped(delay: float, elapsed_s: float, policy: PollPolicy) -> float:
    delay = min(max(delay, POLL_FLOOR_S), policy.max_interval_s)
    return min(delay, max(policy.give_up_s - elapsed_s, POLL_FLOOR_S))
