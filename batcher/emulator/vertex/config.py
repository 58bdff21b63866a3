"""The Vertex emulator's knobs. Every fault defaults to off, so a bare emulator behaves as documented."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batcher.emulator.config import coerce_knob
from batcher.emulator.gemini.facts import BLOCK_REASONS, DEFAULT_PRICES, FINISH_REFUSALS
from batcher.emulator.knobs import bucket_size, check_ranges, replaced
from batcher.emulator.latency import Latency

DEFAULT_PROJECT = "emulator-project"
DEFAULT_PROJECT_NUMBER = "123456789012"
# Regions that serve the Gemini image models, and the global endpoint; our pick of Google's list.
DEFAULT_LOCATIONS = ("global", "us-central1", "us-east4", "europe-west1", "europe-west4", "asia-northeast1")
TOKEN_LIFETIME_S = 3599.0  # what Google's token endpoint answers as expires_in
HOURS_24_S = 24 * 3600.0
DEFAULT_MAX_REQUEST_BYTES = 20 * 2**20
DEFAULT_MAX_IMAGE_BYTES = 7 * 2**20
DEFAULT_MAX_INPUT_IMAGES = 14

_RATES = (
    "refusal_rate",
    "block_rate",
    "dsq_429_rate",
    "error_500_rate",
    "error_503_rate",
    "lost_reply_rate",
    "batch_fail_rate",
    "batch_partial_rate",
    "batch_line_fail_rate",
    "batch_line_refusal_rate",
    "batch_create_503_rate",
    "batch_create_gateway_rate",
)
_SECONDS = ("token_lifetime_s", "batch_queued_s", "batch_expiry_s", "batch_cancel_s", "batch_list_lag_s",
            "batch_create_delay_s")  # fmt: skip
_OPTIONAL_NUMBERS = ("rate_limit", "burst")
_INTS = ("port", "seed", "max_request_bytes", "max_image_bytes", "max_input_images", "batch_output_files")
_LATENCIES = ("latency", "batch_latency")
_MAPPINGS = ("projects", "prices")


@dataclass(frozen=True, slots=True)
class VertexConfig:
    """Knobs of the Vertex emulator. Rates are probabilities per request (or per batch row or job) in [0, 1]."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "emulator-key"  # express mode's x-goog-api-key
    seed: int = 0
    # Projects the credentials may use: project id -> project number (job names carry the number).
    projects: Mapping[str, str] = field(default_factory=lambda: {DEFAULT_PROJECT: DEFAULT_PROJECT_NUMBER})
    locations: tuple[str, ...] = DEFAULT_LOCATIONS
    token_lifetime_s: float = TOKEN_LIFETIME_S  # an access token is refused (401) this long after it was issued
    latency: Latency = field(default_factory=Latency)
    image_bytes: int | None = None  # None: small patterned PNGs; else noisy ones of about this size
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_input_images: int = DEFAULT_MAX_INPUT_IMAGES
    refusal_rate: float = 0.0
    refusal_reason: str = "IMAGE_SAFETY"
    block_rate: float = 0.0
    block_reason: str = "PROHIBITED_CONTENT"
    # Dynamic Shared Quota: a drawn 429, and a capacity (requests per second over a bucket of `burst`).
    dsq_429_rate: float = 0.0
    rate_limit: float | None = None
    burst: float | None = None
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    lost_reply_rate: float = 0.0  # generated and billed, then the connection closes
    prices: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    # Batch prediction.
    batch_latency: Latency = field(default_factory=lambda: Latency("fixed", 60.0))  # PENDING to done
    batch_queued_s: float = 0.0  # JOB_STATE_QUEUED this long before PENDING
    batch_expiry_s: float = HOURS_24_S  # a job that would not be done by then ends EXPIRED, nothing run
    batch_cancel_s: float = 0.0  # JOB_STATE_CANCELLING this long after a cancel
    batch_output_files: int = 3  # the *.jsonl files a job writes its rows across
    batch_fail_rate: float = 0.0  # the job ends FAILED half-way through its run (rows done are kept, billed)
    batch_partial_rate: float = 0.0  # the job ends PARTIALLY_SUCCEEDED with its last tenth of rows not run
    batch_line_fail_rate: float = 0.0  # a row answered with an error status instead of a response
    batch_line_refusal_rate: float = 0.0  # a row whose response carries no image
    batch_create_503_rate: float = 0.0  # the create answers 503 and makes nothing
    batch_create_gateway_rate: float = 0.0  # the create makes the job, then the front end answers an HTML 502
    batch_list_lag_s: float = 0.0  # a new job shows in listings only this long after its create
    batch_create_delay_s: float = 0.0  # the create makes the job at once, its reply waits this long

    def __post_init__(self) -> None:
        check_ranges(self, _RATES, (*_SECONDS, *_OPTIONAL_NUMBERS))
        for name in ("max_request_bytes", "max_image_bytes", "batch_output_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.image_bytes is not None and self.image_bytes < 1:
            raise ValueError("image_bytes must be >= 1")
        if not self.projects or not all(n.isdigit() for n in self.projects.values()):
            raise ValueError("projects must map project ids to project numbers (digits)")
        if not self.locations:
            raise ValueError("locations must name at least one location")
        if self.refusal_reason not in FINISH_REFUSALS:
            raise ValueError(f"refusal_reason must be one of {', '.join(FINISH_REFUSALS)}")
        if self.block_reason not in BLOCK_REASONS:
            raise ValueError(f"block_reason must be one of {', '.join(BLOCK_REASONS)}")

    @property
    def bucket_size(self) -> float:
        return bucket_size(self.burst, self.rate_limit)

    def project_number(self, project: str) -> str | None:
        """The number of a project named by its id or its number; None if it is not one of ours."""
        if project in self.projects:
            return self.projects[project]
        return project if project in self.projects.values() else None

    def replace(self, **knobs: Any) -> VertexConfig:
        """A copy with some knobs changed, coerced from JSON-ish values; errors are ValueError."""
        new: VertexConfig = replaced(self, knobs, _coerce)
        return new

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _LATENCIES:
            out[name] = str(out[name])
        for name in _MAPPINGS:
            out[name] = dict(out[name])
        out["locations"] = list(self.locations)
        return out


def _coerce(name: str, value: Any) -> Any:
    if name in _LATENCIES:
        return coerce_knob("latency", value)
    if name in _MAPPINGS:
        return coerce_knob("prices", value)  # both map strings to strings
    if name == "locations":
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError("locations must be a list of location names")
        return tuple(v.strip() for v in value if v.strip())
    if name in _RATES or name in _SECONDS or name in _OPTIONAL_NUMBERS:
        if value is None and name in _OPTIONAL_NUMBERS:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if name in _INTS or name == "image_bytes":
        if value is None and name == "image_bytes":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value
