"""Plain values shared by every layer: the model facts, task specs and task states. No I/O."""

from __future__ import annotations

import enum
import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal

# --- the models (../shared/api/LINKMODEL.md) ------------------------------------------------------------

RATIOS_31 = ("1x1", "2x3", "3x2", "3x4", "4x3", "4x5", "5x4", "9x16", "16x9", "21x9", "1x4", "4x1", "1x8", "8x1")
RATIOS_25 = RATIOS_31[:10]

# Pixel sizes at 1K; 0.5K is half, 2K twice, 4K four times these.
PIXELS_1K_31: dict[str, tuple[int, int]] = {
    "1x1": (1024, 1024), "2x3": (848, 1264), "3x2": (1264, 848), "3x4": (896, 1200), "4x3": (1200, 896),
    "4x5": (928, 1152), "5x4": (1152, 928), "9x16": (768, 1376), "16x9": (1376, 768), "21x9": (1584, 672),
    "1x4": (512, 2048), "4x1": (2048, 512), "1x8": (384, 3072), "8x1": (3072, 384),
}
PIXELS_1K_25: dict[str, tuple[int, int]] = {
    "1x1": (1024, 1024), "2x3": (832, 1248), "3x2": (1248, 832), "3x4": (864, 1184), "4x3": (1184, 864),
    "4x5": (896, 1152), "5x4": (1152, 896), "9x16": (768, 1344), "16x9": (1344, 768), "21x9": (1536, 672),
}
TIER_SCALE = {"0.5K": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}


@dataclass(frozen=True)
class ModelFacts:
    """What the provider documents about one model."""

    id: str
    nickname: str
    qualities: tuple[str, ...]
    sizes: tuple[str, ...]
    pixels_1k: dict[str, tuple[int, int]]
    price_usd: Decimal | None  # per successful call; None where the provider publishes none

    def pixels(self, quality: str, size: str) -> tuple[int, int]:
        w, h = self.pixels_1k[size]
        scale = TIER_SCALE[quality]
        return int(w * scale), int(h * scale)


MODELS: dict[str, ModelFacts] = {
    m.id: m
    for m in (
        ModelFacts("gemini-3.1-flash-lite-image", "Nano Banana Lite", ("1K",), RATIOS_31, PIXELS_1K_31,
                   Decimal("0.067")),
        ModelFacts("gemini-3.1-flash-image", "Nano Banana 2", ("0.5K", "1K", "2K", "4K"), RATIOS_31,
                   PIXELS_1K_31, None),
        ModelFacts("gemini-2.5-flash-image", "Nano Banana", ("1K",), RATIOS_25, PIXELS_1K_25, None),
    )
}
DEFAULT_MODEL = "gemini-3.1-flash-lite-image"
DEFAULT_QUALITY = "1K"
DEFAULT_SIZE = "1x1"
MAX_INPUT_IMAGES = 10


# --- task specs -----------------------------------------------------------------------------------------


def normalise_prompt(prompt: str) -> str:
    """The prompt as identity sees it: NFC, trimmed, inner whitespace runs folded to one space."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


@dataclass(frozen=True)
class TaskSpec:
    """One image to generate, fully resolved from the manifest."""

    model: str
    prompt: str
    quality: str
    size: str
    filename: str  # relative to the job's output directory, already checked to stay inside it
    images: tuple[str, ...] = ()  # input images of an edit request (URLs or data: URIs)
    seed: str | None = None  # a user's variant label: distinct seeds are distinct tasks on purpose
    name: str | None = None  # a task's name in the manifest, for chains (`from:`)
    source: str = ""  # "file:line" the task came from, for messages
    variables: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """A stable identity from what the API is asked for (not where the file goes)."""
        return spec_key(self.model, self.prompt, self.quality, self.size, self.images, self.seed)


def spec_key(
    model: str, prompt: str, quality: str, size: str, images: tuple[str, ...] = (), seed: str | None = None
) -> str:
    """128-bit hex digest of the normalised spec; equal specs give equal keys across jobs and runs."""
    canon = json.dumps(
        [model, normalise_prompt(prompt), quality, size, list(images), seed],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


class OnUnknown(enum.StrEnum):
    """What to do with a task whose create may or may not have reached the API."""

    RESUBMIT = "resubmit"  # create again; the report flags a possible double charge
    SKIP = "skip"  # fail it for good; never risk paying twice


@dataclass(frozen=True)
class JobSettings:
    """Job-wide settings from the manifest, before command-line overrides."""

    name: str
    output_dir: str
    price_usd: Decimal | None = None  # overrides the model's published price
    budget_usd: Decimal | None = None
    requests_per_second: float | None = None
    max_in_flight: int | None = None
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP call to the API, for the append-only ledger."""

    kind: str  # create | query | download
    outcome: str
    http_status: int | None
    latency_ms: float
    at: float
    remote_task_id: str | None = None
    price_micros: int | None = None
    detail: str | None = None


# --- task states ----------------------------------------------------------------------------------------


class TaskStatus(enum.StrEnum):
    """Where a task stands. Only the store moves a task between states, fenced by its claim."""

    PENDING = "pending"  # to be created (at next_attempt_at)
    SUBMITTING = "submitting"  # intent committed, create on the wire: the reply decides
    UNKNOWN = "unknown"  # the create may or may not have been accepted (crash or lost reply)
    SUBMITTED = "submitted"  # the API holds the task: poll it, never create again
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)


STATUS_ORDER = tuple(TaskStatus)
