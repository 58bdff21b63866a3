"""The Gemini emulator's knobs. Every fault defaults to off, so a bare emulator behaves as documented."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batcher.emulator.config import coerce_knob
from batcher.emulator.gemini.facts import BLOCK_REASONS, DEFAULT_PRICES, FINISH_REFUSALS
from batcher.emulator.knobs import bucket_size, check_ranges, replaced
from batcher.emulator.latency import Latency

DAY_S = 86_400.0
HOURS_48_S = 48 * 3600.0
DEFAULT_MAX_REQUEST_BYTES = 20 * 2**20  # Google's cap on an inline request
DEFAULT_MAX_IMAGE_BYTES = 7 * 2**20  # our choice: per decoded input image
DEFAULT_MAX_INPUT_IMAGES = 14
DEFAULT_MAX_UPLOAD_BYTES = 2 * 2**30  # a batch input file may be up to 2 GB

_RATES = (
    "refusal_rate",
    "block_rate",
    "quota_429_rate",
    "error_500_rate",
    "error_503_rate",
    "error_504_rate",
    "drop_rate",
    "lost_reply_rate",
    "gateway_502_rate",
    "slow_rate",
    "batch_line_fail_rate",
    "batch_line_refusal_rate",
    "batch_fail_rate",
    "batch_create_503_rate",
    "batch_create_lost_rate",
    "batch_create_gateway_rate",
    "batch_ended_no_file_rate",
    "batch_omit_line_rate",
    "results_gone_rate",
)
_SECONDS = (
    "slow_s",
    "retry_delay_s",
    "day_s",
    "batch_expiry_s",
    "batch_unavailable_s",
    "file_ttl_s",
    "batch_create_delay_s",
    "upload_finalize_delay_s",
    "batch_list_lag_s",
)
_OPTIONAL_NUMBERS = ("rate_limit", "burst")
_INTS = (
    "port",
    "seed",
    "max_request_bytes",
    "max_image_bytes",
    "max_input_images",
    "max_upload_bytes",
    "batch_list_unavailable_page",
    "batch_create_gateway_status",
    "results_gone_status",
)
_OPTIONAL_INTS = ("image_bytes", "daily_limit", "minute_limit", "spend_cap_images")
_LATENCIES = ("latency", "batch_latency", "batch_api_latency")
_FLAGS = ("sticky_refusals", "batch_partial_lines", "batch_results_no_final_newline")
GATEWAY_BODIES = ("google", "bare")
GATEWAY_STATUSES = (0, 502, 504)  # 0: each fault draws 502 or 504
GONE_STATUSES = (403, 404)


@dataclass(frozen=True, slots=True)
class GeminiConfig:
    """Knobs of the Gemini emulator. Rates are probabilities per request (or per batch line) in [0, 1]."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "emulator-key"
    seed: int = 0
    latency: Latency = field(default_factory=Latency)  # generateContent waits this long before answering
    # None: small patterned PNGs; a number: noisy PNGs of about that many bytes (real replies are 1-2 MB).
    image_bytes: int | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_input_images: int = DEFAULT_MAX_INPUT_IMAGES
    # Refusals: a candidate with no image, or a prompt blocked with no candidate. Neither is billed. Sticky: a
    # refused prompt is refused again, as the real service does.
    refusal_rate: float = 0.0
    refusal_reason: str = "IMAGE_SAFETY"
    block_rate: float = 0.0
    block_reason: str = "PROHIBITED_CONTENT"
    sticky_refusals: bool = True
    # Quotas. A per-minute 429 drawn at random, an account token bucket answering the same 429, and a count
    # of requests per day (per project and model in the real service; here per emulator).
    quota_429_rate: float = 0.0
    retry_delay_s: float = 47.0  # what RetryInfo says for a drawn per-minute 429
    minute_limit: int | None = None  # only reported in QuotaFailure.quotaValue
    rate_limit: float | None = None  # requests per second; None: unlimited
    burst: float | None = None  # tokens; None: one second's worth (at least 1)
    daily_limit: int | None = None  # requests per day; None: unlimited
    day_s: float = DAY_S  # the quota day's length on the emulator's clock, from start or reset
    # The project's spending cap: past this many images billed online, every generation is refused with a 429
    # RESOURCE_EXHAUSTED naming the cap (Google's project spend caps); None: no cap.
    spend_cap_images: int | None = None
    # Transient faults and lost replies.
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    error_504_rate: float = 0.0  # after the generation's wait, nothing billed
    drop_rate: float = 0.0  # the connection closes before anything is done
    lost_reply_rate: float = 0.0  # generated and billed, then the connection closes
    # generated and billed, then the front end answers 502 with an HTML page: the reply is not the API's
    gateway_502_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 5.0
    prices: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    # Batch Mode.
    batch_latency: Latency = field(default_factory=lambda: Latency("fixed", 60.0))  # create to done
    batch_expiry_s: float = HOURS_48_S  # a batch not done by then ends EXPIRED with no results
    batch_fail_rate: float = 0.0  # a batch ends FAILED (no results, nothing billed)
    batch_line_fail_rate: float = 0.0  # a line answered with an error Status instead of a response
    batch_line_refusal_rate: float = 0.0  # a line whose response carries no image
    batch_unavailable_s: float = 0.0  # batches.get and the download answer 503 this long after success
    file_ttl_s: float = HOURS_48_S  # files are deleted this long after upload
    # Faults of batch creation and listing, to prove a client reconciles instead of creating twice.
    batch_create_503_rate: float = 0.0  # batchGenerateContent answers 503 and creates nothing
    batch_create_lost_rate: float = 0.0  # the batch is created (and will bill), then the connection closes
    batch_list_unavailable_page: int = 0  # this page of batches.list (1 = the first) answers 503; 0: none
    # Slow replies, to let a test kill a client mid-step: the create waits this long after making the batch
    # (it exists and will bill) before answering; an upload's finalize waits this long before storing the file.
    batch_create_delay_s: float = 0.0
    upload_finalize_delay_s: float = 0.0
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # What Google's service does around a long batch (GEMINI.md, "Batch Mode"); all off by default.
    # The create makes the batch (it will bill), then a gateway answers 502/504: Google's own error body
    # ("google": its HTML 502 page, its JSON 504) or a proxy's bare text ("bare").
    batch_create_gateway_rate: float = 0.0
    batch_create_gateway_status: int = 0  # 502 or 504; 0: each fault draws one
    batch_create_gateway_body: str = "google"
    batch_list_lag_s: float = 0.0  # batches.list shows a batch only this long after its creation
    # batches.get, batches.list and batches:cancel wait this long before answering (a cancel acts after it)
    batch_api_latency: Latency = field(default_factory=Latency)
    # Lines finish one by one while RUNNING (batchStats move); a batch that ends CANCELLED, FAILED (at a moment
    # drawn while it runs) or EXPIRED keeps and bills the lines it finished, in a partial responses file.
    batch_partial_lines: bool = False
    batch_ended_no_file_rate: float = 0.0  # such an ending gives no responses file at all (lines still billed)
    batch_omit_line_rate: float = 0.0  # a billed image line is left out of a succeeded batch's responses file
    batch_results_no_final_newline: bool = False  # the responses file's last line has no trailing newline
    # A batch's responses file is gone as soon as it is made: files.get and the download answer this status.
    results_gone_rate: float = 0.0
    results_gone_status: int = 403

    def __post_init__(self) -> None:
        check_ranges(self, _RATES, (*_SECONDS, *_OPTIONAL_NUMBERS))
        if self.batch_list_unavailable_page < 0:
            raise ValueError("batch_list_unavailable_page must be >= 0 (0 turns it off)")
        if self.batch_create_gateway_status not in GATEWAY_STATUSES:
            raise ValueError("batch_create_gateway_status must be 502 or 504 (0: drawn)")
        if self.batch_create_gateway_body not in GATEWAY_BODIES:
            raise ValueError(f"batch_create_gateway_body must be one of {', '.join(GATEWAY_BODIES)}")
        if self.results_gone_status not in GONE_STATUSES:
            raise ValueError("results_gone_status must be 403 or 404")
        if self.day_s <= 0:
            raise ValueError("day_s must be > 0")
        for name in (*_OPTIONAL_INTS, "max_request_bytes", "max_image_bytes", "max_upload_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.refusal_reason not in FINISH_REFUSALS:
            raise ValueError(f"refusal_reason must be one of {', '.join(FINISH_REFUSALS)}")
        if self.block_reason not in BLOCK_REASONS:
            raise ValueError(f"block_reason must be one of {', '.join(BLOCK_REASONS)}")

    @property
    def bucket_size(self) -> float:
        return bucket_size(self.burst, self.rate_limit)

    def replace(self, **knobs: Any) -> GeminiConfig:
        """A copy with some knobs changed, coerced from JSON-ish values; errors are ValueError."""
        new: GeminiConfig = replaced(self, knobs, _coerce)
        return new

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _LATENCIES:
            out[name] = str(out[name])
        out["prices"] = dict(self.prices)
        return out


def _coerce(name: str, value: Any) -> Any:
    if name in _LATENCIES:
        return coerce_knob("latency", value)
    if name == "prices":
        return coerce_knob("prices", value)
    if name in _RATES or name in _SECONDS or name in _OPTIONAL_NUMBERS:
        if value is None and name in _OPTIONAL_NUMBERS:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if name in _INTS or name in _OPTIONAL_INTS:
        if value is None and name in _OPTIONAL_INTS:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value
