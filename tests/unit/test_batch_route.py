"""The batch route's pure parts: what an estimate shows by batch, and what a summary says batch spent and saved."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pytest
from rich.console import Console

from batcher import gallery, views
from batcher.config import batch_prices, unit_price
from batcher.estimate import Estimate, estimate
from batcher.models import JobSettings, TaskSpec
from batcher.report import batch_saved_micros, summary
from batcher.store.base import Job, Ledger

LITE, FLASH, CLASSIC = "gemini-3.1-flash-lite-image", "gemini-3.1-flash-image", "gemini-2.5-flash-image"


def spec(prompt: str, model: str = LITE) -> TaskSpec:
    return TaskSpec(model=model, prompt=prompt, quality="1K", size="1x1", filename=f"{prompt}.png")


def settings(**kw: Any) -> JobSettings:
    return JobSettings(name="j", output_dir="/tmp/out", **kw)


def estimated(specs: list[TaskSpec], s: JobSettings, done: frozenset[str] = frozenset(), **kw: Any) -> Estimate:
    return estimate("j", specs, set(done), lambda m: unit_price(m, s.price_usd, s.provider), s.budget_usd,
                    batch_price_of=batch_prices(s), route=s.route, **kw)  # fmt: skip


def printed(est: Estimate, monkeypatch: pytest.MonkeyPatch) -> str:
    out = io.StringIO()
    monkeypatch.setattr(views, "stdout", Console(file=out, width=200, soft_wrap=True))
    views.estimate_table(est)
    return out.getvalue()


# --- the estimate ------------------------------------------------------------------------------------------


def test_a_gemini_job_is_priced_online_and_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [spec("a"), spec("b"), spec("c"), spec("a")]
    est = estimated(specs, settings(provider="gemini"), done=frozenset({spec("c").key}))
    assert (est.to_run, est.cost_usd, est.cost_batch_usd, est.batch_saving_usd) == (
        2, Decimal("0.134"), Decimal("0.067"), Decimal("0.067"),
    )  # fmt: skip
    j = est.as_json()
    assert (j["estimated_cost_usd"], j["cost_batch_usd"], j["batch_saving_usd"]) == ("0.134", "0.0670", "0.0670")
    assert (j["route"], j["batch_unit_price_usd"], j["batch_note"], j["unit_price_usd"]) == (
        "online", "0.0335", None, "0.067",
    )  # fmt: skip
    text = printed(est, monkeypatch)
    assert "estimated cost        $0.134\n" in text  # the online line as it always was
    assert "by batch              $0.067 (saves $0.067; route: online)" in text


def test_linkmodel_has_no_batch_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    est = estimated([spec("a")], settings())
    assert (est.cost_usd, est.cost_batch_usd, est.batch_saving_usd) == (Decimal("0.067"), None, None)
    j = est.as_json()
    assert (j["cost_batch_usd"], j["batch_saving_usd"], j["batch_unit_price_usd"]) == (None, None, {})
    assert j["batch_note"] == "no batch mode"
    assert "by batch              no batch mode" in printed(est, monkeypatch)


def test_a_model_without_a_batch_price_gives_no_batch_total(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(provider="gemini", price_usd=Decimal("0.04"))  # Flash has no published price, online or batch
    est = estimated([spec("a"), spec("b", FLASH)], s)
    assert est.cost_usd == Decimal("0.08")
    assert est.cost_batch_usd is None  # a sum leaving Flash out would understate what the batch costs
    assert est.as_json()["batch_unit_price_usd"] == {FLASH: None, LITE: "0.0335"}
    assert "no batch price known for gemini-3.1-flash-image: set batch.price_usd" in printed(est, monkeypatch)
    priced = estimated([spec("a"), spec("b", FLASH)], settings(provider="gemini", price_usd=Decimal("0.04"),
                                                               batch_price_usd=Decimal("0.01")))  # fmt: skip
    assert (priced.cost_batch_usd, priced.batch_saving_usd) == (Decimal("0.02"), Decimal("0.06"))


def test_the_budget_is_held_against_the_jobs_route(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [spec("a"), spec("b")]  # $0.134 online, $0.067 by batch
    online = estimated(specs, settings(provider="gemini", budget_usd=Decimal("0.1")))
    assert online.route_cost_usd == Decimal("0.134")
    assert "budget                $0.1 (OVER budget)" in printed(online, monkeypatch)
    batch = estimated(specs, settings(provider="gemini", route="batch", budget_usd=Decimal("0.1")))
    assert batch.route_cost_usd == Decimal("0.067")
    assert "budget                $0.1 (within budget by batch)" in printed(batch, monkeypatch)


def test_nothing_left_to_run_costs_nothing_either_way() -> None:
    est = estimated([spec("a")], settings(provider="gemini"), done=frozenset({spec("a").key}))
    assert (est.cost_usd, est.cost_batch_usd, est.batch_saving_usd) == (Decimal(0), Decimal(0), Decimal(0))


# --- the report's summary ------------------------------------------------------------------------------------

JOB = Job(1, "j", "m.yaml", "out", None, None, {"provider": "gemini", "route": "batch"}, 1)
ONLINE = {LITE: 67_000}
BATCH = {LITE: 33_500}


def test_batch_spend_is_shown_apart_from_online_spend_with_what_it_saved() -> None:
    # 10 images, 4 of them by batch: 6 × $0.067 online + 4 × $0.0335 by batch
    ledger = Ledger(billed_calls=10, cost_micros=6 * 67_000 + 4 * 33_500, batch_billed=4, batch_spent_micros=134_000)
    head = summary(JOB, ledger, ONLINE, batch_unit_micros=BATCH)
    assert (head["cost_usd"], head["online_cost_usd"], head["batch_cost_usd"]) == ("0.536", "0.402", "0.134")
    assert (head["batch_billed"], head["batch_saved_usd"]) == (4, "0.134")  # 4 × ($0.067 − $0.0335)
    assert head["batch_unit_price_usd"] == {LITE: "0.0335"}


def test_a_job_that_never_used_the_batch_route_saved_nothing() -> None:
    head = summary(JOB, Ledger(billed_calls=2, cost_micros=134_000), ONLINE)
    assert (head["online_cost_usd"], head["batch_cost_usd"], head["batch_saved_usd"]) == ("0.134", "0", "0")
    assert head["batch_unit_price_usd"] == {}


def test_without_batch_prices_the_saving_is_not_known() -> None:
    ledger = Ledger(billed_calls=2, cost_micros=67_000, batch_billed=2, batch_spent_micros=67_000)
    assert summary(JOB, ledger, ONLINE)["batch_saved_usd"] is None
    assert summary(JOB, ledger, ONLINE, batch_unit_micros={FLASH: 10_000})["batch_saved_usd"] is None


def test_with_several_models_the_saving_is_the_least_it_can_have_been() -> None:
    online = {LITE: 67_000, FLASH: 40_000, CLASSIC: 39_000}
    batch = {LITE: 33_500, FLASH: 30_000}  # CLASSIC has no batch price: no saving to compare, left out
    assert batch_saved_micros(3, online, batch) == 3 * 10_000  # every line taken as FLASH's, the smaller saving
    assert batch_saved_micros(3, {LITE: 67_000}, batch) == 3 * 33_500  # one model: exact
    assert batch_saved_micros(0, online, {}) == 0


def test_the_summary_lines_and_the_gallery_show_the_batch_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(billed_calls=10, cost_micros=536_000, batch_billed=4, batch_spent_micros=134_000)
    head = summary(JOB, ledger, ONLINE, batch_unit_micros=BATCH)
    out = io.StringIO()
    monkeypatch.setattr(views, "stderr", Console(file=out, width=200, soft_wrap=True))
    views.summary_lines(head)
    assert "of the cost: online $0.402, by batch $0.134 (4 images; saved $0.134 against the online price)" in (
        out.getvalue()
    )
    page = "".join(gallery.render(head, [], [], "/tmp/report.html"))
    assert 'data-stat="batch-cost"' in page and 'data-stat="batch-saved"' in page and "$0.134" in page
    plain = summary(JOB, Ledger(billed_calls=1, cost_micros=67_000), ONLINE)
    assert 'data-stat="batch-cost"' not in "".join(gallery.render(plain, [], [], "/tmp/report.html"))
