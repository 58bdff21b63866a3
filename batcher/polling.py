"""When to poll a submitted task next: pure functions of how long it has run and what the run has learned.

Every poll costs a request against the account's rate limit, so the first poll aims where most generations are
done: at a high quantile (`FIRST_POLL_QUANTILE`) of their latency. Polls only see whether a task is done yet,
never when it finished, so the quantile is tracked directly from those yes/no answers (a Robbins-Monro
quantile estimate): a task still running at its first poll pushes the estimate up, a finished one nudges it
down, and it settles where that share of tasks is done. Stragglers are then polled on a growing interval.
"""

from __future__ import annotations

from dataclasses import dataclass

POLL_FLOOR_S = 0.25  # never poll one task more often than this, seconds
FIRST_POLL_QUANTILE = 0.93  # most generations are done at the first poll: about 1.1 polls per image
TRACK_STEP = 0.06  # how fast the first-poll estimate moves per observation (relative)
# A first poll tells about the estimate only when it was made near it: "done" at a poll much later than the
# estimate, or "still running" at one much earlier, is no news (the estimate has already moved past it). This also
# bounds how far one wave of polls made with the same estimate (tasks created together) can move it.
OFF_ESTIMATE = 1.3


@dataclass(frozen=True)
class PollPolicy:
    initial_s: float = 2.0  # first poll after a create before anything is learned, seconds
    growth: float = 1.3  # each later poll waits this much longer than the task's age at the last one
    max_interval_s: float = 15.0
    give_up_s: float = 900.0  # a generation still running after this is failed (LinkModel's client: 15 min)


class FirstPollTracker:
    """The delay of a task's first poll, tracked as the FIRST_POLL_QUANTILE of generation latency."""

    __slots__ = ("observations", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.observations = 0

    def observe(self, first_poll_after_s: float, done: bool) -> None:
        """What a task's first poll, `first_poll_after_s` after its create, found."""
        if done and first_poll_after_s > self.seconds * OFF_ESTIMATE:
            return  # it waited long for its turn
        if not done and first_poll_after_s < self.seconds / OFF_ESTIMATE:
            return  # polled with an estimate since raised
        q = FIRST_POLL_QUANTILE
        # stationary where P(still running) = 1 - q
        self.seconds *= (1 + TRACK_STEP * q) if not done else (1 - TRACK_STEP * (1 - q))
        self.seconds = min(max(self.seconds, POLL_FLOOR_S), 600.0)
        self.observations += 1


DRAIN_FIRST = 0.75  # while draining, the first poll comes this much earlier (near the median)
DRAIN_GROWTH = 1.15  # and stragglers are polled more often


def next_poll_in(
    age_s: float,
    polls: int,
    first_poll_s: float,
    policy: PollPolicy,
    *,
    draining: bool = False,
    running_s: float | None = None,
) -> float | None:
    """Seconds from now until the next poll of a task created `age_s` ago and polled `polls` times; None when
    it has run too long and should be given up. `running_s`: how long polls have found it still running (the
    give-up clock; default `age_s`): time while nobody polled (a stopped run) never counts against a task.
    `draining`: nothing is left to create, so the rate budget has room and the last images are worth
    collecting sooner."""
    running = age_s if running_s is None else running_s
    if running >= policy.give_up_s:
        return None
    first, growth = (first_poll_s * DRAIN_FIRST, DRAIN_GROWTH) if draining else (first_poll_s, policy.growth)
    if polls == 0:
        delay = first - age_s
    else:
        delay = max(first, age_s) * (growth - 1.0)
    delay = min(max(delay, POLL_FLOOR_S if polls else 0.0), policy.max_interval_s)
    return min(delay, max(policy.give_up_s - running, POLL_FLOOR_S))


class RunningClock:
    """How long polls have found a task still running: the give-up clock. Only the time between two answers
    that both said "still running" counts; a gap without such answers (a stopped run, an outage) does not."""

    __slots__ = ("_last", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._last: float | None = None

    def answered(self, now: float, running: bool) -> None:
        if running and self._last is not None:
            self.seconds += now - self._last
        self._last = now if running else None
