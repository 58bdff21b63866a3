"""The providers' tables: their models, sizes in either notation, input-image limits and prices."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batcher.catalog import DEFAULT_PROVIDER, PROVIDERS, UnknownProviderError, provider_facts
from batcher.config import batch_unit_price, unit_price
from batcher.errors import ConfigError, UnknownPriceError
from batcher.manifest.taskfields import choice_errors
from batcher.models import JobSettings, spec_key

LITE, FLASH, CLASSIC = "gemini-3.1-flash-lite-image", "gemini-3.1-flash-image", "gemini-2.5-flash-image"


def test_linkmodel_is_the_default_and_both_providers_serve_the_three_models() -> None:
    assert DEFAULT_PROVIDER == "linkmodel" == JobSettings("j", "out").provider
    assert list(PROVIDERS) == ["linkmodel", "gemini", "vertex"]
    for provider in PROVIDERS.values():
        assert list(provider.models) == [LITE, FLASH, CLASSIC]
        assert provider.model("dall-e") is None


@pytest.mark.parametrize("provider", ["linkmodel", "gemini"])
@pytest.mark.parametrize("written", ["16x9", "16:9", "16X9", " 16 : 9 "])
def test_either_notation_is_the_same_canonical_size(provider: str, written: str) -> None:
    assert provider_facts(provider).to_canonical(written) == "16x9"


@pytest.mark.parametrize("written", ["16:10", "7x5", "5", "", "16x9x2", "sixteen:nine"])
def test_a_ratio_no_model_serves_has_no_canonical_size(written: str) -> None:
    assert provider_facts("gemini").to_canonical(written) is None


def test_the_wire_uses_the_providers_own_notation() -> None:
    assert provider_facts("gemini").to_wire("16x9") == "16:9"
    assert provider_facts("gemini").to_wire("21x9") == "21:9"
    assert provider_facts("linkmodel").to_wire("16x9") == "16x9"


def test_the_31_family_adds_four_tall_and_wide_ratios() -> None:
    gemini = provider_facts("gemini")
    extra = ("1x4", "4x1", "1x8", "8x1")
    for model in (LITE, FLASH):
        assert set(extra) <= set(gemini.models[model].sizes)
    assert not set(extra) & set(gemini.models[CLASSIC].sizes)
    assert len(gemini.sizes) == 14  # the union, in table order
    assert gemini.models[LITE].pixels("1K", "16x9") == (1376, 768)
    assert gemini.models[FLASH].pixels("4K", "1x1") == (4096, 4096)


def test_input_image_limits_are_per_model() -> None:
    linkmodel, gemini = provider_facts("linkmodel"), provider_facts("gemini")
    assert [m.max_input_images for m in linkmodel.models.values()] == [10, 10, 10]
    assert [m.max_input_images for m in gemini.models.values()] == [14, 14, 3]
    assert (linkmodel.max_input_images, gemini.max_input_images) == (10, 14)


def test_batch_prices_are_half_the_online_price_where_one_is_known() -> None:
    gemini = provider_facts("gemini")
    assert gemini.models[LITE].price_usd == Decimal("0.067")
    assert gemini.models[LITE].batch_price_usd == Decimal("0.0335")
    assert gemini.models[FLASH].batch_price_usd is None and gemini.models[CLASSIC].batch_price_usd is None
    assert provider_facts("linkmodel").models[LITE].batch_price_usd is None  # LinkModel has no batch mode


def test_an_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProviderError) as caught:
        provider_facts("nope")
    assert isinstance(caught.value, ConfigError)  # the CLI exits 2 with the message
    assert caught.value.message == "unknown provider 'nope'; known providers: linkmodel, gemini, vertex"


def test_the_unit_price_comes_from_the_providers_table() -> None:
    assert unit_price(LITE, None) == Decimal("0.067")
    assert unit_price(LITE, None, "gemini") == Decimal("0.067")
    assert unit_price(FLASH, Decimal("0.04"), "gemini") == Decimal("0.04")  # an override wins
    with pytest.raises(UnknownPriceError):
        unit_price(FLASH, None, "gemini")
    with pytest.raises(UnknownPriceError):
        unit_price("dall-e", None)


def test_the_batch_price_comes_from_the_manifest_else_the_providers_table() -> None:
    assert batch_unit_price(LITE, None, "gemini") == Decimal("0.0335")
    assert batch_unit_price(LITE, Decimal("0.03"), "gemini") == Decimal("0.03")  # batch.price_usd wins
    assert batch_unit_price(FLASH, Decimal("0.02"), "gemini") == Decimal("0.02")
    with pytest.raises(UnknownPriceError) as caught:
        batch_unit_price(FLASH, None, "gemini")
    assert caught.value.message == (
        "no batch price is known: Gemini API publishes no batch price for model 'gemini-3.1-flash-image'; "
        "set batch.price_usd in the manifest"
    )
    with pytest.raises(UnknownPriceError) as caught:
        batch_unit_price(LITE, None, "linkmodel")
    assert "LinkModel has no batch mode; set batch.price_usd" in caught.value.message
    assert (provider_facts("gemini").batch_mode, provider_facts("linkmodel").batch_mode) == (True, False)


def test_one_function_answers_for_every_provider_in_its_notation() -> None:
    assert choice_errors(LITE, "1K", "16x9", "gemini") == ()
    ((field, message),) = choice_errors(CLASSIC, "1K", "1x4", "gemini")
    assert field == "size"
    assert message == (
        "size '1:4' is not an aspect ratio of gemini-2.5-flash-image; "
        "use one of 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9"
    )
    ((_, message),) = choice_errors(CLASSIC, "1K", "1x4", "linkmodel")
    assert message.endswith("use one of 1x1, 2x3, 3x2, 3x4, 4x3, 4x5, 5x4, 9x16, 16x9, 21x9")
    ((field, message),) = choice_errors("dall-e", "1K", "1x1", "gemini")
    assert field == "model" and message.endswith(f"known models: {LITE}, {FLASH}, {CLASSIC}")


def test_identity_is_unchanged_by_the_catalog() -> None:
    # The key this spec had before providers existed: stores hold it, so the canonical notation stays 16x9.
    assert spec_key(LITE, "a red mug", "1K", "16x9") == "6a490fe125ff0f7a76a3c5c759bd937b"
