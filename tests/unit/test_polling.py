"""When to poll next: the first poll at the tracked latency quantile, stragglers on a growing interval."""

from __future__ import annotations

import random

import pytest

from batcher.polling import FIRST_POLL_QUANTILE, POLL_FLOOR_S, FirstPollTracker, PollPolicy, next_poll_in

POLICY = PollPolicy(initial_s=2.0, growth=1.5, max_interval_s=10.0, give_up_s=900.0)


@pytest.mark.parametrize(
    ("age", "polls", "first", "expected"),
    [
        (0.0, 0, 2.0, 2.0),  # first poll at the estimate
        (1.5, 0, 2.0, 0.5),
        (5.0, 0, 2.0, 0.0),  # a resumed task, older than the estimate: poll now
        (2.0, 1, 2.0, 1.0),  # then each wait is half the task's age (growth 1.5)
        (6.0, 3, 2.0, 3.0),
        (40.0, 9, 2.0, 10.0),  # capped
        (2.1, 1, 0.1, 1.05),
        (0.3, 1, 0.1, POLL_FLOOR_S),  # floor
        (899.9, 40, 2.0, POLL_FLOOR_S),
    ],
)
def test_poll_schedule(age: float, polls: int, first: float, expected: float) -> None:
    assert next_poll_in(age, polls, first, POLICY) == pytest.approx(expected)


def test_gives_up_after_the_limit() -> None:
    assert next_poll_in(900.0, 50, 2.0, POLICY) is None


@pytest.mark.parametrize("median", [0.5, 2.0, 8.0])
def test_the_first_poll_settles_at_the_latency_quantile(median: float) -> None:
    rng = random.Random(1)
    tracker = FirstPollTracker(2.0)
    latencies = [rng.lognormvariate(0, 0.5) * median for _ in range(3000)]
    done_share = []
    for i, latency in enumerate(latencies):
        done = latency <= tracker.seconds
        if i >= 2000:
            done_share.append(done)
        tracker.observe(tracker.seconds, done)
    true_q = sorted(latencies)[int(FIRST_POLL_QUANTILE * len(latencies))]
    assert tracker.seconds == pytest.approx(true_q, rel=0.2)
    assert sum(done_share) / len(done_share) == pytest.approx(FIRST_POLL_QUANTILE, abs=0.05)


def test_waves_of_tasks_polled_with_one_estimate_do_not_throw_it_off() -> None:
    """Tasks created together are first polled together, with the same estimate: hundreds of answers at once
    must not push it up (or down) hundreds of times."""
    rng = random.Random(1)
    tracker = FirstPollTracker(2.0)
    estimates, done_share = [], []
    for wave in range(60):
        used = tracker.seconds
        latencies = [rng.uniform(0.2, 1.0) for _ in range(256)]
        for latency in latencies:
            tracker.observe(used, latency <= used)
        if wave >= 10:
            estimates.append(used)
            done_share.append(sum(latency <= used for latency in latencies) / len(latencies))
    true_q = 0.2 + 0.8 * FIRST_POLL_QUANTILE
    assert 0.7 * true_q < min(estimates) and max(estimates) < 1.3 * true_q
    assert sum(done_share) / len(done_share) == pytest.approx(FIRST_POLL_QUANTILE, abs=0.05)


def test_a_late_first_poll_that_finds_the_task_done_teaches_nothing() -> None:
    tracker = FirstPollTracker(2.0)
    tracker.observe(5.0, done=True)
    assert tracker.seconds == 2.0 and tracker.observations == 0
    tracker.observe(5.0, done=False)  # still running at 5 s: the estimate was too low
    assert tracker.seconds > 2.0


def test_an_early_first_poll_that_finds_the_task_running_teaches_nothing() -> None:
    tracker = FirstPollTracker(2.0)
    tracker.observe(1.0, done=False)  # polled with an estimate since raised
    assert tracker.seconds == 2.0 and tracker.observations == 0
    tracker.observe(1.0, done=True)  # done by 1 s: the estimate may be too high
    assert tracker.seconds < 2.0
