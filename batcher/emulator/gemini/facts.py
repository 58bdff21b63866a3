"""The Gemini emulator's own reading of the Gemini API's facts: models, aspect ratios, sizes, tokens, reasons.

A separate copy from the client's model table on purpose: a misreading of the contract should show up as a
disagreement between two readings, not be mirrored by both. Aspect ratios use a colon (``16:9``); the 3.1
family offers 14 of them, 2.5 offers 10. ``imageSize`` is an uppercase tier name (``1K``); Lite and 2.5 offer
only ``1K``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

LITE_MODEL = "gemini-3.1-flash-lite-image"
FLASH_MODEL = "gemini-3.1-flash-image"
CLASSIC_MODEL = "gemini-2.5-flash-image"

API_VERSIONS = ("v1beta", "v1")  # the reference pages use v1beta; google-genai 3.x defaults to v1
DEFAULT_TIER = "1K"
DEFAULT_RATIO = "1:1"
TIER_SCALE: Mapping[str, float] = MappingProxyType({"0.5K": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0})

# (width, height) in pixels at 1K, from Google's published tables.
_SIZES_31: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "1:1": (1024, 1024),
        "2:3": (848, 1264),
        "3:2": (1264, 848),
        "3:4": (896, 1200),
        "4:3": (1200, 896),
        "4:5": (928, 1152),
        "5:4": (1152, 928),
        "9:16": (768, 1376),
        "16:9": (1376, 768),
        "21:9": (1584, 672),
        "1:4": (512, 2048),
        "4:1": (2048, 512),
        "1:8": (384, 3072),
        "8:1": (3072, 384),
    }
)
_SIZES_25: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "1:1": (1024, 1024),
        "2:3": (832, 1248),
        "3:2": (1248, 832),
        "3:4": (864, 1184),
        "4:3": (1184, 864),
        "4:5": (896, 1152),
        "5:4": (1152, 896),
        "9:16": (768, 1344),
        "16:9": (1344, 768),
        "21:9": (1536, 672),
    }
)

# Output tokens of one image: 1290 at 1K is documented; the other tiers are our choice.
IMAGE_TOKENS: Mapping[str, int] = MappingProxyType({"0.5K": 1290, "1K": 1290, "2K": 1290, "4K": 2000})
INPUT_IMAGE_TOKENS = 258  # prompt tokens Gemini counts per input image
CHARS_PER_TOKEN = 4  # our choice: a rough prompt token count

# Why a candidate carries no image (finishReason), and why a prompt got no candidate at all (blockReason).
FINISH_REFUSALS = (
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "PROHIBITED_CONTENT",
    "SAFETY",
    "RECITATION",
    "IMAGE_RECITATION",
    "NO_IMAGE",
    "IMAGE_OTHER",
    "OTHER",
)
BLOCK_REASONS = ("SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY")
MODALITIES = frozenset({"TEXT", "IMAGE"})
INPUT_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})

# Quotas are per project and model; these are the ids a 429's QuotaFailure names.
QUOTA_PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel"
QUOTA_PER_DAY = "GenerateRequestsPerDayPerProjectPerModel"
QUOTA_METRIC = "generativelanguage.googleapis.com/generate_requests_per_model"
SERVICE = "generativelanguage.googleapis.com"


@dataclass(frozen=True, slots=True)
class GeminiModel:
    """What one model accepts: its image sizes (tiers) and aspect ratios with pixel sizes at 1K."""

    model_id: str
    tiers: tuple[str, ...]
    sizes_at_1k: Mapping[str, tuple[int, int]]

    def pixel_size(self, tier: str, ratio: str) -> tuple[int, int]:
        """(width, height) for a valid tier and aspect ratio of this model."""
        width, height = self.sizes_at_1k[ratio]
        scale = TIER_SCALE[tier]
        return round(width * scale), round(height * scale)


MODELS: Mapping[str, GeminiModel] = MappingProxyType(
    {
        LITE_MODEL: GeminiModel(LITE_MODEL, ("1K",), _SIZES_31),
        FLASH_MODEL: GeminiModel(FLASH_MODEL, ("0.5K", "1K", "2K", "4K"), _SIZES_31),
        CLASSIC_MODEL: GeminiModel(CLASSIC_MODEL, ("1K",), _SIZES_25),
    }
)

# USD per image online; Batch Mode bills half. Only the Lite model's price is published.
DEFAULT_PRICES: Mapping[str, str] = MappingProxyType({LITE_MODEL: "0.067"})
