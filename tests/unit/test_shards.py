"""Shard planning: limits never exceeded, every task in exactly one shard in order; names; polling pace."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.shards import (
    LAST_CHECK_S,
    NAME_LIMIT,
    batch_saving_micros,
    display_name,
    next_check_in,
    plan_shards,
)

sizes = st.lists(st.integers(min_value=0, max_value=2_000), max_size=300)
limits = st.tuples(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=3_000))


@given(sizes, limits)
def test_every_task_lands_in_exactly_one_shard_in_order(line_sizes: list[int], lim: tuple[int, int]) -> None:
    lines = [(i + 1000, n) for i, n in enumerate(line_sizes)]
    plans = plan_shards(lines, max_requests=lim[0], max_bytes=lim[1])
    assert [t for p in plans for t in p.task_ids] == [t for t, _ in lines]
    sizes_of = dict(lines)
    for p in plans:
        assert p.task_ids and p.bytes == sum(sizes_of[t] for t in p.task_ids)


@given(sizes, limits)
def test_no_shard_exceeds_either_limit_unless_it_is_one_oversize_line(
    line_sizes: list[int], lim: tuple[int, int]
) -> None:
    max_requests, max_bytes = lim
    plans = plan_shards(list(enumerate(line_sizes)), max_requests=max_requests, max_bytes=max_bytes)
    for p in plans:
        assert p.requests <= max_requests
        if p.oversize:
            assert p.requests == 1 and p.bytes > max_bytes
        else:
            assert p.bytes <= max_bytes


@given(sizes, limits)
def test_shards_are_full_before_a_new_one_starts(line_sizes: list[int], lim: tuple[int, int]) -> None:
    # greedy: a shard was closed only because the next line would not fit (or was oversize)
    max_requests, max_bytes = lim
    plans = plan_shards(list(enumerate(line_sizes)), max_requests=max_requests, max_bytes=max_bytes)
    for p, after in itertools.pairwise(plans):
        if p.oversize or after.oversize:
            continue
        first_next = line_sizes[after.task_ids[0]]
        assert p.requests == max_requests or p.bytes + first_next > max_bytes


def test_an_oversize_line_is_its_own_flagged_shard() -> None:
    plans = plan_shards([(1, 10), (2, 500), (3, 10)], max_requests=10, max_bytes=100)
    assert [(p.task_ids, p.oversize) for p in plans] == [((1,), False), ((2,), True), ((3,), False)]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        plan_shards([(1, 1)], max_requests=0)
    with pytest.raises(ValueError):
        plan_shards([(1, -1)])


@given(st.text(max_size=300), st.integers(min_value=0, max_value=10**12), st.integers(0, 10**9), st.text(max_size=40))
def test_display_names_are_safe_short_and_stable(job: str, job_id: int, seq: int, nonce: str) -> None:
    name = display_name(job, job_id, seq, nonce)
    assert len(name) <= NAME_LIMIT
    assert re.fullmatch(r"[a-z0-9-]+", name)
    assert name == display_name(job, job_id, seq, nonce)
    assert name.endswith(f"-{job_id}-s{seq}-" + (re.sub(r"[^a-z0-9]+", "-", nonce.lower()).strip("-") or "x"))


def test_display_names_differ_by_job_shard_and_nonce() -> None:
    names = {display_name("j" * 300, j, s, n) for j in (1, 2) for s in (1, 2, 12) for n in ("ab", "cd")}
    assert len(names) == 12
    assert display_name("My Job!", 3, 1, "x1") == "batcher-my-job-3-s1-x1"


@given(st.floats(min_value=-1e9, max_value=1e12, allow_nan=False), st.integers(min_value=-5, max_value=10**6))
def test_the_pace_stays_between_ten_seconds_and_five_minutes(age: float, checks: int) -> None:
    assert 10.0 <= next_check_in(age, checks) <= LAST_CHECK_S


def test_the_pace_grows_from_ten_seconds_to_five_minutes() -> None:
    old = 10**6
    paces = [next_check_in(old, n) for n in range(20)]
    assert paces[0] == 10.0 and paces[1] == 15.0
    assert paces == sorted(paces) and paces[-1] == 300.0
    assert next_check_in(20.0, 10) == 20.0  # a young batch found by a restart is not left waiting long


def test_the_saving_is_the_online_price_of_billed_lines_less_their_batch_cost() -> None:
    assert batch_saving_micros(4, 39_000, 4 * 19_500) == 4 * 19_500
