"""What changed between two versions of a job's tasks, and what the change will cost. Pure.

A task is matched across versions by its name, or, when it has none, by its output file: the same slot with
another key is *changed* (a reworded prompt, a new size), a slot only in the new version is *added*, only in
the old one *removed*. Added and changed tasks are paid for, except those a finished output already satisfies
(the job's own, or the cache's) and duplicates of one spec, which are made once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

KINDS = ("added", "removed", "changed", "unchanged")
MAX_EXAMPLES = 20  # slots listed per kind; the counts are always complete


class Entry(NamedTuple):
    """One task of a version, reduced to what a diff needs."""

    slot: str  # "name:<name>" or "file:<filename>": what matches a task across versions
    key: str  # identity of what the API is asked for (models.spec_key)
    model: str
    source: str  # "file:line", for the listing


def entry(name: str | None, filename: str, key: str, model: str, source: str) -> Entry:
    """A task's entry: matched by name when it has one, else by its output file (case-insensitively, since
    macOS and Windows ignore case)."""
    slot = f"name:{name}" if name else f"file:{filename.casefold()}"
    return Entry(slot, key, model, source)


@dataclass
class Diff:
    counts: Counter[str] = field(default_factory=Counter)  # by kind
    examples: dict[str, list[Entry]] = field(default_factory=lambda: {k: [] for k in KINDS})
    free: int = 0  # added or changed, but already made: no cost
    to_pay_by_model: Counter[str] = field(default_factory=Counter)
    unit_price: dict[str, Decimal] = field(default_factory=dict)

    @property
    def to_pay(self) -> int:
        return sum(self.to_pay_by_model.values())

    @property
    def cost_usd(self) -> Decimal:
        return sum((self.unit_price[m] * n for m, n in self.to_pay_by_model.items()), Decimal(0))

    def as_json(self) -> dict[str, Any]:
        return {
            **{kind: self.counts[kind] for kind in KINDS},
            "already_made": self.free,
            "to_pay": self.to_pay,
            "estimated_cost_usd": str(self.cost_usd),
            "examples": {
                kind: [{"task": _shown(e.slot), "source": e.source} for e in self.examples[kind]] for kind in KINDS
            },
        }


def _shown(slot: str) -> str:
    return slot.partition(":")[2]


def diff(
    old: Iterable[Entry],
    new: Iterable[Entry],
    price_of: Callable[[str], Decimal],
    made: Callable[[str], bool] | None = None,
) -> Diff:
    """Compare two versions (`new` is streamed; `old` is held as slot → entry). `made(key)`: an output of that
    spec exists already (done in the job or in the cache), so it costs nothing."""
    before: dict[str, Entry] = {}
    for e in old:
        before.setdefault(e.slot, e)  # identical rows share a slot and a key
    result = Diff()
    seen: set[str] = set()
    counted: set[int] = set()  # hash(key) of added/changed specs already counted once
    for e in new:
        if e.slot in seen:
            continue
        seen.add(e.slot)
        was = before.pop(e.slot, None)
        kind = "added" if was is None else "unchanged" if was.key == e.key else "changed"
        _count(result, kind, e)
        if kind == "unchanged" or hash(e.key) in counted:
            continue
        counted.add(hash(e.key))
        if e.model not in result.unit_price:
            result.unit_price[e.model] = price_of(e.model)
        if made is not None and made(e.key):
            result.free += 1
        else:
            result.to_pay_by_model[e.model] += 1
    for e in before.values():
        _count(result, "removed", e)
    return result


def _count(result: Diff, kind: str, e: Entry) -> None:
    result.counts[kind] += 1
    if len(result.examples[kind]) < MAX_EXAMPLES:
        result.examples[kind].append(e)
