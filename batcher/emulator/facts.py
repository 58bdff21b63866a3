"""The emulator's own reading of the LinkModel API's model facts: models, aspect ratios, tiers, pixel sizes.

Deliberately a separate copy from the client's: a mistake in one reading of the contract should show up as a
disagreement between the two, not be mirrored by both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

LITE_MODEL = "gemini-3.1-flash-lite-image"
FLASH_MODEL = "gemini-3.1-flash-image"
CLASSIC_MODEL = "gemini-2.5-flash-image"

BASE_TIER = "1K"
# Pixel sizes of a tier are those of 1K times this factor.
TIER_SCALE: Mapping[str, float] = MappingProxyType({"0.5K": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0})

# (width, height) in pixels at 1K, from Google's published tables.
_SIZES_31_AT_1K: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "1x1": (1024, 1024),
        "2x3": (848, 1264),
        "3x2": (1264, 848),
        "3x4": (896, 1200),
        "4x3": (1200, 896),
        "4x5": (928, 1152),
        "5x4": (1152, 928),
        "9x16": (768, 1376),
        "16x9": (1376, 768),
        "21x9": (1584, 672),
        "1x4": (512, 2048),
        "4x1": (2048, 512),
        "1x8": (384, 3072),
        "8x1": (3072, 384),
    }
)
_SIZES_25_AT_1K: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "1x1": (1024, 1024),
        "2x3": (832, 1248),
        "3x2": (1248, 832),
        "3x4": (864, 1184),
        "4x3": (1184, 864),
        "4x5": (896, 1152),
        "5x4": (1152, 896),
        "9x16": (768, 1344),
        "16x9": (1344, 768),
        "21x9": (1536, 672),
    }
)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What one model accepts: its quality tiers and aspect ratios (with pixel sizes at 1K)."""

    model_id: str
    tiers: tuple[str, ...]
    sizes_at_1k: Mapping[str, tuple[int, int]]

    def pixel_size(self, quality: str, size: str) -> tuple[int, int]:
        """(width, height) in pixels for a valid tier and aspect ratio of this model."""
        base_w, base_h = self.sizes_at_1k[size]
        scale = TIER_SCALE[quality]
        return round(base_w * scale), round(base_h * scale)


MODELS: Mapping[str, ModelFacts] = MappingProxyType(
    {
        LITE_MODEL: ModelFacts(LITE_MODEL, ("1K",), _SIZES_31_AT_1K),
        FLASH_MODEL: ModelFacts(FLASH_MODEL, ("0.5K", "1K", "2K", "4K"), _SIZES_31_AT_1K),
        CLASSIC_MODEL: ModelFacts(CLASSIC_MODEL, ("1K",), _SIZES_25_AT_1K),
    }
)

# USD per call, as a decimal string the way the create reply carries it. Only the Lite model's is published.
DEFAULT_PRICES: Mapping[str, str] = MappingProxyType({LITE_MODEL: "0.067"})

DEFAULT_QUALITY = BASE_TIER
DEFAULT_SIZE = "1x1"
