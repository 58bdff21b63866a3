"""The cost-estimation dry run: what a manifest asks for, what is already done, what is left to pay. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batcher.errors import UnknownPriceError
from batcher.models import TaskSpec

NO_BATCH_MODE = "no batch mode"


@dataclass
class Estimate:
    """What running a manifest would cost (`batcher estimate`, `batcher.estimate`): its tasks, those done or
    cached already, the new ones to pay for, and their cost online (`cost_usd`) and by batch (`cost_batch_usd`)."""

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
    route: str = "online"  # the job's: which of the two costs below the budget is held against
    batch_mode: bool = False  # the provider has a batch mode (LinkModel has none)
    batch_unit_price: dict[str, Decimal | None] = field(default_factory=dict)  # per model; None: not known

    @property
    def to_run(self) -> int:
        """New tasks: the ones that will be created, and paid for."""
        return self.tasks - self.done - self.cached

    @property
    def cost_usd(self) -> Decimal:
        """What the new tasks cost online."""
        return sum((self.unit_price[m] * n for m, n in self.to_run_by_model.items()), Decimal(0))

    @property
    def cost_batch_usd(self) -> Decimal | None:
        """What the new tasks cost by batch; None when the provider has no batch mode, or some model to run has
        no known batch price (a partial sum would understate it)."""
        if not self.batch_mode:
            return None
        total = Decimal(0)
        for m, n in self.to_run_by_model.items():
            price = self.batch_unit_price.get(m)
            if price is None:
                return None
            total += price * n
        return total

    @property
    def batch_saving_usd(self) -> Decimal | None:
        """What the batch route saves on the new tasks, against online; None when no batch cost is known."""
        batch = self.cost_batch_usd
        return None if batch is None else self.cost_usd - batch

    @property
    def batch_note(self) -> str | None:
        """Why there is no batch cost, for people; None when there is one."""
        if not self.batch_mode:
            return NO_BATCH_MODE
        unpriced = sorted(m for m in self.to_run_by_model if self.batch_unit_price.get(m) is None)
        return f"no batch price known for {', '.join(unpriced)}: set batch.price_usd" if unpriced else None

    @property
    def route_cost_usd(self) -> Decimal:
        """The cost by the job's route: what its budget is held against."""
        batch = self.cost_batch_usd
        return batch if self.route == "batch" and batch is not None else self.cost_usd

    def as_json(self) -> dict[str, Any]:
        prices = {m: str(p) for m, p in sorted(self.unit_price.items())}
        batch_prices = {m: None if p is None else str(p) for m, p in sorted(self.batch_unit_price.items())}
        batch, saving = self.cost_batch_usd, self.batch_saving_usd
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
            "route": self.route,
            "batch_unit_price_usd": next(iter(batch_prices.values())) if len(batch_prices) == 1 else batch_prices,
            "cost_batch_usd": None if batch is None else str(batch),
            "batch_saving_usd": None if saving is None else str(saving),
            "batch_note": self.batch_note,
        }


def estimate(
    job: str,
    specs: Iterable[TaskSpec],
    done_keys: set[str],
    price_of: Callable[[str], Decimal],
    budget_usd: Decimal | None = None,
    cached: Callable[[str], bool] | None = None,
    *,
    batch_price_of: Callable[[str], Decimal] | None = None,
    route: str = "online",
) -> Estimate:
    """Count `specs` (streamed; only a hash per distinct task is kept) against the keys already done, and those
    `cached` says a finished output elsewhere will satisfy (None: no cache). Only new tasks are priced.
    `batch_price_of`: a model's batch price (UnknownPriceError where none is known); None: no batch mode."""
    est = Estimate(job, budget_usd=budget_usd, route=route, batch_mode=batch_price_of is not None)
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
            if batch_price_of is not None:
                try:
                    est.batch_unit_price[spec.model] = batch_price_of(spec.model)
                except UnknownPriceError:  # the online estimate stands; the batch one says what is missing
                    est.batch_unit_price[spec.model] = None
        if key in done_keys:
            est.done += 1
        elif cached is not None and cached(key):
            est.cached += 1
        else:
            est.to_run_by_model[spec.model] += 1
    return est
