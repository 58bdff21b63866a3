"""`batcher diff` and `estimate` as pure functions: added, removed, changed, cached; only new tasks are priced."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batcher.diff import Entry, diff, entry
from batcher.estimate import estimate
from batcher.models import TaskSpec

LITE = "gemini-3.1-flash-lite-image"
PRICE = Decimal("0.067")


def e(slot: str, key: str, model: str = LITE) -> Entry:
    return Entry(slot, key, model, "job.yaml:1")


@pytest.mark.parametrize(
    ("old", "new", "counts", "to_pay"),
    [
        ([], [e("file:a", "k1")], {"added": 1}, 1),
        ([e("file:a", "k1")], [], {"removed": 1}, 0),
        ([e("file:a", "k1")], [e("file:a", "k1")], {"unchanged": 1}, 0),
        ([e("file:a", "k1")], [e("file:a", "k2")], {"changed": 1}, 1),
        # a rename is a removal and an addition; two slots asking for one image are paid once
        ([e("file:a", "k1")], [e("file:b", "k1"), e("file:c", "k1")], {"added": 2, "removed": 1}, 1),
        # identical rows share a slot
        ([e("file:a", "k1"), e("file:a", "k1")], [e("file:a", "k1"), e("file:a", "k1")], {"unchanged": 1}, 0),
        ([e("name:x", "k1"), e("file:b", "k2")], [e("name:x", "k3"), e("file:b", "k2"), e("file:c", "k4")],
         {"changed": 1, "unchanged": 1, "added": 1}, 2),
    ],
)  # fmt: skip
def test_diff_table(old: list[Entry], new: list[Entry], counts: dict[str, int], to_pay: int) -> None:
    d = diff(old, iter(new), lambda _: PRICE)
    assert {k: v for k, v in d.counts.items() if v} == counts
    assert d.to_pay == to_pay and d.cost_usd == PRICE * to_pay


def test_changes_already_made_cost_nothing() -> None:
    d = diff([e("file:a", "k1")], [e("file:a", "k2"), e("file:b", "k3")], lambda _: PRICE, made=lambda k: k == "k2")
    assert (d.counts["changed"], d.counts["added"], d.free, d.to_pay) == (1, 1, 1, 1)
    assert d.as_json()["estimated_cost_usd"] == "0.067"
    assert d.as_json()["changed"] == 1 and d.as_json()["examples"]["added"] == [{"task": "b", "source": "job.yaml:1"}]


def test_a_task_is_matched_by_name_else_by_its_file_ignoring_case() -> None:
    assert entry("hero", "x.png", "k", LITE, "s").slot == "name:hero"
    assert entry(None, "Out/X.PNG", "k", LITE, "s").slot == "file:out/x.png"


def spec(prompt: str, model: str = LITE) -> TaskSpec:
    return TaskSpec(model, prompt, "1K", "1x1", f"{prompt}.png")


def test_estimate_counts_new_cached_and_done_and_prices_only_new() -> None:
    specs = [spec(f"p{i}") for i in range(10)] + [spec("p0")]  # one duplicate row
    done = {spec("p0").key, spec("p1").key}
    cached_keys = {spec("p2").key, spec("p3").key, spec("p4").key}
    est = estimate("job", iter(specs), done, lambda _: PRICE, cached=lambda k: k in cached_keys)
    assert (est.rows, est.tasks, est.duplicates, est.done, est.cached, est.to_run) == (11, 10, 1, 2, 3, 5)
    assert est.cost_usd == 5 * PRICE
    j = est.as_json()
    assert (j["already_done"], j["cached"], j["new"], j["estimated_cost_usd"]) == (2, 3, 5, "0.335")
    no_cache = estimate("job", iter(specs), done, lambda _: PRICE)
    assert (no_cache.cached, no_cache.to_run) == (0, 8)
