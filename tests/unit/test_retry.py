"""Backoff with full jitter and Retry-After parsing: pure decisions in tables."""

from __future__ import annotations

import email.utils

import pytest

from batcher.retry import RETRY_AFTER_CAP_S, RetryPolicy, backoff_s, parse_retry_after

POLICY = RetryPolicy(base_s=1.0, cap_s=30.0)


@pytest.mark.parametrize(
    ("failures", "rnd", "expected"),
    [(0, 0.9, 0.0), (1, 0.5, 0.5), (2, 0.5, 1.0), (3, 0.999, 3.996), (5, 1.0, 16.0), (6, 1.0, 30.0),
     (60, 0.5, 15.0), (1000, 0.5, 15.0)],
)  # fmt: skip
def test_backoff_is_uniform_under_an_exponential_capped_ceiling(failures: int, rnd: float, expected: float) -> None:
    assert backoff_s(failures, POLICY, rnd) == pytest.approx(expected)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("3", 3.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-4", 0.0),
        ("99999", RETRY_AFTER_CAP_S),
        (email.utils.formatdate(NOW + 7, usegmt=True), 7.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(header: str | None, expected: float | None) -> None:
    got = parse_retry_after(header, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)
