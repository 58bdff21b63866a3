"""The emulator's knobs. Every fault defaults to off, so a bare emulator behaves like the guide says."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from batcher.emulator.facts import DEFAULT_PRICES
from batcher.emulator.knobs import bucket_size, check_ranges, replaced
from batcher.emulator.latency import Latency

Variant = Literal["guide", "field"]
RetryAfterFormat = Literal["seconds", "http-date"]
# What a hostile file URL attacks: its scheme (file://, ftp://), the client's size cap (an endless stream),
# its image check (HTML bytes labelled image/png), or its choice of path (a name full of ../).
HostileKind = Literal["scheme", "huge", "not-image", "traversal"]
HOSTILE_KINDS: tuple[HostileKind, ...] = ("scheme", "huge", "not-image", "traversal")

REQUEST_KINDS = frozenset({"create", "query", "download"})
DEFAULT_FAULT_KINDS = frozenset({"create", "query"})
ALL_MODELS = "*"  # key in `prices` that applies to every model without its own entry

DEFAULT_MAX_IMAGE_BYTES = 10 * 2**20  # bytes, per decoded data: URI
DEFAULT_MAX_EVENTS = 4_000_000  # request timestamps kept; ~100 bytes each
DEFAULT_HOSTILE_HUGE_BYTES = 2**30  # bytes a "huge" download streams (lazily) unless the client hangs up


_RATES = (
    "fail_rate",
    "cancel_rate",
    "error_500_rate",
    "error_503_rate",
    "drop_rate",
    "malformed_rate",
    "slow_rate",
    "lost_create_rate",
    "truncate_rate",
    "hostile_file_rate",
    "accepted_error_rate",
    "not_image_rate",
    "forget_rate",
)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Knobs of the LinkModel emulator. Rates are probabilities per request (or per task) in [0, 1]."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port
    api_key: str = "emulator-key"
    seed: int = 0
    latency: Latency = field(default_factory=Latency)
    variant: Variant = "guide"
    images_field: str = "images"
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    # Outcomes of a generation, drawn once per task at create time.
    fail_rate: float = 0.0
    fail_reason: str = "content refused"
    cancel_rate: float = 0.0
    # Faults of a single request, for the kinds in fault_kinds.
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 1.0
    fault_kinds: frozenset[str] = DEFAULT_FAULT_KINDS
    lost_create_rate: float = 0.0
    # A create accepted (and billed), then answered by the gateway in front of the API with 502 or 504 and an
    # HTML page: the reply says nothing of the task the API holds (the 500/503 faults above come before it).
    accepted_error_rate: float = 0.0
    truncate_rate: float = 0.0
    # A download answered with a page that is not an image, labelled image/png (a file host's error page).
    not_image_rate: float = 0.0
    # A task the API forgets once its Success has been reported (drawn per task at create): later queries and
    # its file URL answer 404, as after a result's retention ran out.
    forget_rate: float = 0.0
    # Every task is forgotten this long after its generation finished (queries and files answer 404); None:
    # kept for ever. LinkModel's results live about 48 hours.
    task_ttl_s: float | None = None
    # Hosted files.
    url_ttl_s: float | None = None
    # A successful generation whose file URL attacks the client instead (drawn once per task at create time).
    hostile_file_rate: float = 0.0
    hostile_file_kind: HostileKind = "scheme"
    hostile_huge_bytes: int = DEFAULT_HOSTILE_HUGE_BYTES
    # Account-wide token bucket over create and query requests.
    rate_limit: float | None = None  # requests per second; None: unlimited
    burst: float | None = None  # tokens; None: one second's worth (at least 1)
    retry_after_format: RetryAfterFormat = "seconds"
    errors_http_200: bool = False
    prices: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    report_price: bool = True
    max_events: int = DEFAULT_MAX_EVENTS

    def __post_init__(self) -> None:
        # Accept any set of kinds, but keep the frozen one so configs stay comparable.
        object.__setattr__(self, "fault_kinds", frozenset(self.fault_kinds))
        check_ranges(self, _RATES, ("slow_s", "url_ttl_s", "rate_limit", "burst", "task_ttl_s"))
        if self.variant not in ("guide", "field"):
            raise ValueError(f"variant must be 'guide' or 'field', got {self.variant!r}")
        if self.retry_after_format not in ("seconds", "http-date"):
            raise ValueError("retry_after_format must be 'seconds' or 'http-date'")
        if not self.fault_kinds <= REQUEST_KINDS:
            raise ValueError(f"fault_kinds must be among {sorted(REQUEST_KINDS)}, got {sorted(self.fault_kinds)}")
        if not self.images_field:
            raise ValueError("images_field must not be empty")
        if self.hostile_file_kind not in HOSTILE_KINDS:
            raise ValueError(
                f"hostile_file_kind must be one of {', '.join(HOSTILE_KINDS)}, got {self.hostile_file_kind!r}"
            )
        if self.hostile_huge_bytes < 1:
            raise ValueError("hostile_huge_bytes must be >= 1")
        if self.max_image_bytes < 1 or self.max_events < 0:
            raise ValueError("max_image_bytes must be >= 1 and max_events >= 0")

    @property
    def bucket_size(self) -> float:
        """Tokens in a full bucket."""
        return bucket_size(self.burst, self.rate_limit)

    def price_for(self, model: str) -> str | None:
        """The price the create reply reports for a model, or None to leave it out."""
        if not self.report_price:
            return None
        return self.prices.get(model, self.prices.get(ALL_MODELS))

    def replace(self, **knobs: Any) -> EmulatorConfig:
        """A copy with some knobs changed; values are coerced from JSON-ish forms (see `coerce_knob`)."""
        new: EmulatorConfig = replaced(self, knobs, coerce_knob)
        return new

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready knobs."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["latency"] = str(self.latency)
        out["fault_kinds"] = sorted(self.fault_kinds)
        out["prices"] = dict(self.prices)
        return out


def coerce_knob(name: str, value: Any) -> Any:
    """Turn a knob value as JSON or a CLI would give it into the field's type; errors are ValueError."""
    if name == "latency":
        if isinstance(value, Latency):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Latency("fixed", float(value))
        if isinstance(value, str):
            return Latency.parse(value)
        raise ValueError("latency must be a spec like 'fixed:0.2' or a number of seconds")
    if name == "fault_kinds":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
            raise ValueError("fault_kinds must be a list of request kinds")
        return frozenset(v.strip() for v in value)
    if name == "prices":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError("prices must map model ids (or '*') to decimal strings")
        return dict(value)
    if name in _RATES or name in ("slow_s", "url_ttl_s", "rate_limit", "burst", "task_ttl_s"):
        if value is None and name in ("url_ttl_s", "rate_limit", "burst", "task_ttl_s"):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if name in ("port", "seed", "max_image_bytes", "max_events", "hostile_huge_bytes"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if name in ("errors_http_200", "report_price"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value
