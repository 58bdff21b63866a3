"""One pricing function (provider, route, model, override) behind estimate, diff, run, report and retry."""

from __future__ import annotations

from decimal import Decimal

from batcher import job_review, session
from batcher.config import image_price
from batcher.estimate import Estimate
from tests.conftest import WriteManifest

LITE = "gemini-3.1-flash-lite-image"


def test_the_pricing_function_takes_provider_route_model_and_override() -> None:
    assert image_price("gemini", "online", LITE) == Decimal("0.067")
    assert image_price("gemini", "batch", LITE) == Decimal("0.0335")
    assert image_price("gemini", "batch", LITE, Decimal("0.02")) == Decimal("0.02")
    assert image_price("linkmodel", "online", LITE, Decimal("0.05")) == Decimal("0.05")


async def test_diff_prices_a_gemini_batch_manifest_from_geminis_table(write_manifest: WriteManifest) -> None:
    old = write_manifest("old.yaml", provider="gemini", route="batch", tasks=[{"prompt": "a"}])
    new = write_manifest("new.yaml", provider="gemini", route="batch", tasks=[{"prompt": "a"}, {"prompt": "b"},
                                                                               {"prompt": "c"}])  # fmt: skip
    change = await job_review.compare(str(old), str(new), None, None)
    assert change.unit_price == {LITE: Decimal("0.0335")}  # Gemini's batch price, not LinkModel's online one
    assert change.cost_usd == 2 * Decimal("0.0335")
    estimated: Estimate = await session.dry_run(str(new), None, None)
    assert estimated.cost_batch_usd == 3 * Decimal("0.0335") == estimated.route_cost_usd  # the same table


async def test_diff_and_estimate_take_the_manifests_batch_price(write_manifest: WriteManifest) -> None:
    top = {"provider": "gemini", "route": "batch", "batch": {"price_usd": "0.01"}, "price_usd": "0.05"}
    old = write_manifest("old.yaml", tasks=[{"prompt": "a"}], **top)
    new = write_manifest("new.yaml", tasks=[{"prompt": "a"}, {"prompt": "b"}], **top)
    change = await job_review.compare(str(old), str(new), None, None)
    estimated = await session.dry_run(str(new), None, None)
    assert change.cost_usd == Decimal("0.01") and estimated.cost_batch_usd == 2 * Decimal("0.01")
    assert estimated.cost_usd == 2 * Decimal("0.05")  # online: the manifest's price_usd
