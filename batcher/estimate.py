"""The cost-estimation dry run: what a manifest asks for, what is already done, what is left to pay. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batcher.models import TaskSpec


@dataclass
class Estimate:
    job: str
    rows: int = 0  # tasks the manifest lists, duplicates included
    tasks: int = 0  # distinct tasks
    duplicates: int = 0  # rows collapsed into an identical earlier one
    done: int = 0  # distinct tasks already succeeded in the store
    cached: int = 0  # distinct tasks a finished output of another job satisfies: no API call, no cost
    by_model_size: Counter[tuple[str, str]] = field(default_factory=Counter)  # distinct tasks
    to_run_by_model: Counter[str] = field(default_factory=Counter)
    unit_price: dict[str, Decimal] = field(default_factory=dict)  # per model, USD per call
    budget_usd: Decimal | None = None

    @property
    def to_run(self) -> int:
        """New tasks: the ones that will be created, and paid for."""
        return self.tasks - self.done - self.cached

    @property
    def cost_usd(self) -> Decimal:
        return sum((self.unit_price[m] * n for m, n in self.to_run_by_model.items()), Decimal(0))

    def as_json(self) -> dict[str, Any]:
        prices = {m: str(p) for m, p in sorted(self.unit_price.items())}
        return {
            "job": self.job,
            "rows": self.rows,
            "tasks": self.tasks,
            "duplicates_collapsed": self.duplicates,
            "already_done": self.done,
            "cached": self.cached,
            "new": self.to_run,
            "to_run": self.to_run,
            "by_model_size": [{"model": m, "size": s, "tasks": n} for (m, s), n in sorted(self.by_model_size.items())],
            "unit_price_usd": next(iter(prices.values())) if len(prices) == 1 else prices,
            "estimated_cost_usd": str(self.cost_usd),
            "budget_usd": None if self.budget_usd is None else str(self.budget_usd),
        }


def estimate(
    job: str,
    specs: Iterable[TaskSpec],
    done_keys: set[str],
    price_of: Callable[[str], Decimal],
    budget_usd: Decimal | None = None,
    cached: Callable[[str], bool] | None = None,
) -> Estimate:
    """Count `specs` (streamed; only a hash per distinct task is kept) against the keys already done, and those
    `cached` says a finished output elsewhere will satisfy (None: no cache). Only new tasks are priced."""
    est = Estimate(job, budget_usd=budget_usd)
    seen: set[int] = set()  # hash(key): 1M distinct tasks cost ~60 MB here, not ~150 MB of strings
    for spec in specs:
        est.rows += 1
        key = spec.key
        h = hash(key)
        if h in seen:
            est.duplicates += 1
            continue
        seen.add(h)
        est.tasks += 1
        est.by_model_size[(spec.model, spec.size)] += 1
        if spec.model not in est.unit_price:
            est.unit_price[spec.model] = price_of(spec.model)
        if key in done_keys:
            est.done += 1
        elif cached is not None and cached(key):
            est.cached += 1
        else:
            est.to_run_by_model[spec.model] += 1
    return est
