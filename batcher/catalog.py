"""What each provider serves: its models, their qualities, aspect ratios, input-image limits and prices. No I/O.

Every check of a task's model, quality, size and input images reads these tables, so adding a provider is
adding a table. Sizes are kept in one canonical notation, `16x9` (LinkModel's, and what task identity has
always hashed); a provider's own notation (`16:9` for Gemini) is only for its wire and its messages. A manifest
may write either notation for either provider: both name the same ratio, and give the same task key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import MappingProxyType

from batcher.errors import ConfigError

# --- the models ----------------------------------------------------------------------------------------

RATIOS_31 = ("1x1", "2x3", "3x2", "3x4", "4x3", "4x5", "5x4", "9x16", "16x9", "21x9", "1x4", "4x1", "1x8", "8x1")
RATIOS_25 = RATIOS_31[:10]

# Pixel sizes at 1K; 0.5K is half, 2K twice, 4K four times these.
PIXELS_1K_31: Mapping[str, tuple[int, int]] = MappingProxyType(
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
PIXELS_1K_25: Mapping[str, tuple[int, int]] = MappingProxyType(
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
TIER_SCALE: Mapping[str, float] = MappingProxyType({"0.5K": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0})
BATCH_DISCOUNT = Decimal("0.5")  # Gemini's Batch Mode bills half the online price

DEFAULT_MODEL = "gemini-3.1-flash-lite-image"
DEFAULT_QUALITY = "1K"
DEFAULT_SIZE = "1x1"  # canonical notation, as every size below
MAX_INPUT_IMAGES = 10  # LinkModel's limit, for every model


@dataclass(frozen=True)
class ModelFacts:
    """What a provider documents about one model."""

    id: str
    nickname: str
    qualities: tuple[str, ...]
    sizes: tuple[str, ...]  # canonical notation
    pixels_1k: Mapping[str, tuple[int, int]] = field(repr=False)
    price_usd: Decimal | None  # per successful call; None where the provider publishes none
    max_input_images: int = MAX_INPUT_IMAGES
    batch_price_usd: Decimal | None = None  # per image in the provider's batch mode; None: none, or not known

    def pixels(self, quality: str, size: str) -> tuple[int, int]:
        w, h = self.pixels_1k[size]
        scale = TIER_SCALE[quality]
        return int(w * scale), int(h * scale)


def _batch_priced(facts: ModelFacts) -> ModelFacts:
    price = None if facts.price_usd is None else facts.price_usd * BATCH_DISCOUNT
    return replace(facts, batch_price_usd=price)


# The three models as LinkModel serves them; the other providers' tables start from these.
_LITE = ModelFacts(
    "gemini-3.1-flash-lite-image", "Nano Banana Lite", ("1K",), RATIOS_31, PIXELS_1K_31, Decimal("0.067")
)
_FLASH = ModelFacts(
    "gemini-3.1-flash-image", "Nano Banana 2", ("0.5K", "1K", "2K", "4K"), RATIOS_31, PIXELS_1K_31, None
)
_CLASSIC = ModelFacts("gemini-2.5-flash-image", "Nano Banana", ("1K",), RATIOS_25, PIXELS_1K_25, None)


# --- the providers -------------------------------------------------------------------------------------

_RATIO = re.compile(r"(\d+)\s*[x:]\s*(\d+)")  # either notation, as written (after lower-casing)


@dataclass(frozen=True)
class ProviderFacts:
    """One provider: its models (in the order messages list them) and its notation for sizes."""

    name: str  # as a manifest's `provider:` names it
    label: str  # for people
    models: Mapping[str, ModelFacts]
    separator: str  # of the provider's size notation: "x" (16x9) or ":" (16:9)
    batch_route: bool = True  # False: batch prices are known, but batcher does not drive its batch mode yet
    # how the store names what it keeps per account (a learned rate, a shared token bucket): `rate_limit`, or
    # `rate_limit:gemini`. LinkModel's names have no suffix: stores made before the other providers hold them so
    account_suffix: str = ""
    sizes: tuple[str, ...] = field(init=False)  # every size some model serves, canonical, in table order

    def __post_init__(self) -> None:
        seen = dict.fromkeys(s for m in self.models.values() for s in m.sizes)
        object.__setattr__(self, "sizes", tuple(seen))

    def model(self, model_id: str) -> ModelFacts | None:
        return self.models.get(model_id)

    def account_key(self, base: str) -> str:
        """The store's name for what it keeps about this provider's account under `base`."""
        return base + self.account_suffix

    @property
    def batch_mode(self) -> bool:
        """Whether the provider has a batch mode batcher drives: some model of its table has a batch price."""
        return self.batch_route and any(m.batch_price_usd is not None for m in self.models.values())

    @property
    def max_input_images(self) -> int:
        """The most input images any of its models takes."""
        return max(m.max_input_images for m in self.models.values())

    def to_canonical(self, size: str) -> str | None:
        """`16:9`, `16x9`, `16X9` → `16x9` when some model of this provider serves that ratio; else None."""
        ratio = _RATIO.fullmatch(size.strip().lower())
        if ratio is None:
            return None
        canonical = f"{ratio[1]}x{ratio[2]}"
        return canonical if canonical in self.sizes else None

    def to_wire(self, canonical: str) -> str:
        """A canonical size in the provider's own notation: what its API is sent, and what messages show."""
        return canonical.replace("x", self.separator)


def _table(*models: ModelFacts) -> Mapping[str, ModelFacts]:
    return MappingProxyType({m.id: m for m in models})


LINKMODEL = ProviderFacts("linkmodel", "LinkModel", _table(_LITE, _FLASH, _CLASSIC), "x")
# Gemini API: the same models, up to 14 reference images on the 3.1 family and 3 on 2.5, and a batch mode.
GEMINI = ProviderFacts(
    "gemini",
    "Gemini API",
    _table(
        _batch_priced(replace(_LITE, max_input_images=14)),
        _batch_priced(replace(_FLASH, max_input_images=14)),
        _batch_priced(replace(_CLASSIC, max_input_images=3)),
    ),
    ":",
    account_suffix=":gemini",
)

# Vertex AI: the Gemini API's models, limits and prices ($0.067 online for Lite, Google's rate; batch prediction
# bills half, $0.0335), billed to a Cloud project.
VERTEX = ProviderFacts("vertex", "Vertex AI", GEMINI.models, ":", account_suffix=":vertex")

PROVIDERS: Mapping[str, ProviderFacts] = MappingProxyType({p.name: p for p in (LINKMODEL, GEMINI, VERTEX)})
DEFAULT_PROVIDER = "linkmodel"


class UnknownProviderError(ConfigError):
    """No such provider."""


def unknown_provider(name: str, hint: str = "") -> str:
    """The message for a provider not in PROVIDERS (`hint`: a did-you-mean; a manifest adds where it is written)."""
    return f"unknown provider '{name}'{hint}; known providers: {', '.join(PROVIDERS)}"


def provider_facts(name: str = DEFAULT_PROVIDER) -> ProviderFacts:
    """The table of the provider `name`; UnknownProviderError, listing the known ones, for any other name."""
    facts = PROVIDERS.get(name)
    if facts is None:
        raise UnknownProviderError(unknown_provider(name))
    return facts
