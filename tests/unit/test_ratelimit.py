"""The adaptive rate: keeps a configured limit, finds an unknown one from 429s, holds just under it."""

from __future__ import annotations

import pytest

from batcher.ratelimit import AdaptiveRate


def test_a_configured_rate_is_kept_and_never_exceeded() -> None:
    r = AdaptiveRate.start(configured=50.0, learned=None)
    for t in range(1, 60):
        r.tick(float(t))
    assert (r.rate, r.phase) == (50.0, "fixed")
    r.rate_limited(61.0, 61.0 + 1)  # configured too high: it adapts, but never above the configuration
    assert r.rate < 50.0
    for t in range(62, 400):
        r.tick(float(t))
    assert r.rate <= 50.0


def test_without_a_limit_it_probes_upward_each_second() -> None:
    r = AdaptiveRate.start(configured=None, learned=None, initial=10.0)
    r.tick(0.0)
    rates = []
    for t in range(1, 5):
        r.tick(float(t))
        rates.append(r.rate)
    assert rates == pytest.approx([15.0, 22.5, 33.75, 50.625])


def test_a_429_cuts_to_just_under_what_the_api_accepted() -> None:
    r = AdaptiveRate.start(configured=None, learned=None, initial=80.0)
    for i in range(100):  # the API accepted 50 requests a second over the last two seconds
        r.accepted(8.0 + i * 0.02)
    r.rate_limited(10.0, 10.0 + 1)
    assert r.phase == "hold" and r.rate == pytest.approx(0.95 * 50, rel=0.05)


def test_a_429_after_a_quiet_spell_cuts_by_a_fixed_factor() -> None:
    r = AdaptiveRate.start(configured=None, learned=None, initial=30.0)
    r.accepted(1.0)
    r.rate_limited(10.0, 10.0 + 1)
    assert r.rate == pytest.approx(24.0)


def test_time_spent_paused_does_not_count_as_a_slow_api() -> None:
    r = AdaptiveRate.start(configured=None, learned=None, initial=30.0)
    for i in range(40):
        r.accepted(9.0 + i * 0.025)
    r.rate_limited(10.0, 11.0)  # paused until 11.0
    first = r.rate
    for i in range(10):  # 0.5 s of sending after the pause, at 20 a second
        r.accepted(11.0 + i * 0.05)
    r.rate_limited(11.5, 12.5)
    assert r.rate == pytest.approx(min(first * 0.9, 20 * 0.95), rel=0.1)
    assert r.found_limit == r.rate


def test_the_429s_of_one_overshoot_cut_once() -> None:
    r = AdaptiveRate.start(configured=None, learned=None, initial=80.0)
    for i in range(100):
        r.accepted(8.0 + i * 0.02)
    r.rate_limited(10.0, 10.0 + 1)
    after_first = r.rate
    r.rate_limited(10.3, 10.3 + 1)
    r.rate_limited(10.6, 10.6 + 1)
    assert r.rate == after_first


def test_holding_creeps_up_slowly() -> None:
    r = AdaptiveRate.start(configured=None, learned=40.0)
    assert r.phase == "hold"
    r.tick(0.0)
    r.tick(14.0)
    assert r.rate == 40.0
    r.tick(15.0)
    assert r.rate == pytest.approx(40.8)


def test_the_rate_never_falls_below_its_floor() -> None:
    r = AdaptiveRate.start(configured=None, learned=None, initial=1.0)
    for t in range(0, 100, 2):
        r.rate_limited(float(t), float(t) + 1)
    assert r.rate == r.min_rate
