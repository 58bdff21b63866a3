"""When to poll next: a gentle backoff before anything is known, the latency quantiles after."""

from __future__ import annotations

import pytest

from batcher.polling import MIN_SAMPLES, POLL_FLOOR_S, LatencyStats, PollPolicy, next_poll_in

POLICY = PollPolicy(initial_s=2.0, factor=1.5, max_interval_s=10.0, give_up_s=900.0)


@pytest.mark.parametrize(
    ("elapsed", "polls", "expected"),
    [(0.0, 0, 2.0), (1.5, 0, 0.5), (5.0, 0, POLL_FLOOR_S), (2.0, 1, 3.0), (5.0, 2, 4.5), (30.0, 6, 10.0),
     (899.9, 40, POLL_FLOOR_S)],
)  # fmt: skip
def test_without_observations_polls_back_off(elapsed: float, polls: int, expected: float) -> None:
    assert next_poll_in(elapsed, polls, None, POLICY) == pytest.approx(expected)


def test_gives_up_after_the_limit() -> None:
    assert next_poll_in(900.0, 50, None, POLICY) is None


def test_with_observations_polls_aim_at_the_latency_quantiles() -> None:
    stats = LatencyStats(float(s) for s in range(1, 101))  # 1..100 s
    assert next_poll_in(0.0, 0, stats, POLICY) == pytest.approx(10.0)  # median 51 s, capped at max interval
    wide = PollPolicy(initial_s=2.0, max_interval_s=1000.0)
    assert next_poll_in(0.0, 0, stats, wide) == pytest.approx(stats.quantile(0.5))
    assert next_poll_in(stats.quantile(0.5), 1, stats, wide) == pytest.approx(
        stats.quantile(0.8) - stats.quantile(0.5)
    )
    beyond = next_poll_in(200.0, 5, stats, wide)
    assert beyond is not None and beyond >= POLL_FLOOR_S


def test_too_few_observations_are_not_trusted() -> None:
    stats = LatencyStats([0.1] * (MIN_SAMPLES - 1))
    assert next_poll_in(0.0, 0, stats, POLICY) == pytest.approx(POLICY.initial_s)


def test_latency_stats_keep_a_bounded_window() -> None:
    stats = LatencyStats()
    for i in range(5000):
        stats.add(float(i))
    assert len(stats) == 2048
    assert stats.quantile(0.0) == 5000 - 2048
