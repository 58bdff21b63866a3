"""What the Gemini emulator counted: enough for a test to prove what a client was billed for, and how often."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

NO_REPLY = 0  # the status recorded when the connection was closed without an HTTP reply
BATCH_DISCOUNT = Decimal("0.5")  # Batch Mode bills half the online price


def _bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


@dataclass(slots=True)
class GeminiStats:
    """Counters since start or the last reset."""

    requests: dict[str, dict[int, int]] = field(default_factory=dict)  # kind -> HTTP status -> count
    requests_by_version: dict[str, int] = field(default_factory=dict)  # v1beta | v1 -> API requests
    # Online billing: an image generated is billed whether or not its reply arrived.
    images_billed: int = 0
    billed_by_prompt: dict[str, int] = field(default_factory=dict)
    billed_by_model: dict[str, int] = field(default_factory=dict)
    lost_replies: int = 0  # generated and billed, then the connection closed
    gateway_errors: int = 0  # generated and billed, then answered by the front end's HTML 502
    input_images: int = 0  # input images (inlineData or fileData parts) of the generations that were billed
    refusals: int = 0  # a candidate without an image (finishReason), not billed
    blocked: int = 0  # promptFeedback.blockReason and no candidate, not billed
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0  # every 429
    minute_quota_429s: int = 0  # 429s naming the per-minute quota (drawn, or from the token bucket)
    daily_refusals: int = 0  # 429s naming the per-day quota
    dropped: int = 0  # connections closed before anything was done
    peak_concurrent_requests: int = 0
    # Batch Mode.
    files_uploaded: int = 0
    files_deleted: int = 0
    batches_created: int = 0
    batches_by_display_name: dict[str, int] = field(default_factory=dict)
    batches_by_state: dict[str, int] = field(default_factory=dict)  # terminal states reached
    batch_lines_billed: int = 0  # image lines of succeeded batches
    batch_lines_by_key: dict[str, int] = field(default_factory=dict)
    batch_lines_by_model: dict[str, int] = field(default_factory=dict)
    batch_lines_failed: int = 0
    batch_lines_refused: int = 0
    unavailable_answers: int = 0  # 503s of batches.get / downloads after success, and of a failing list page

    def record(self, kind: str, status: int, version: str) -> None:
        """Count one finished request of a kind (generate, upload, file, batch, download)."""
        _bump(self.requests_by_version, version)
        by_status = self.requests.setdefault(kind, {})
        by_status[status] = by_status.get(status, 0) + 1

    def count(self, kind: str, status: int | None = None) -> int:
        by_status = self.requests.get(kind, {})
        return sum(by_status.values()) if status is None else by_status.get(status, 0)

    def bill_image(self, model: str, prompt: str, input_images: int = 0) -> None:
        self.images_billed += 1
        self.input_images += input_images
        _bump(self.billed_by_prompt, prompt)
        _bump(self.billed_by_model, model)

    def bill_line(self, model: str, key: str) -> None:
        self.batch_lines_billed += 1
        _bump(self.batch_lines_by_key, key)
        _bump(self.batch_lines_by_model, model)

    def refuse(self, reason: str, blocked: bool) -> None:
        if blocked:
            self.blocked += 1
        else:
            self.refusals += 1
        _bump(self.refusals_by_reason, reason)

    def created_batch(self, display_name: str) -> None:
        self.batches_created += 1
        _bump(self.batches_by_display_name, display_name)

    def ended_batch(self, state: str) -> None:
        _bump(self.batches_by_state, state)

    def cost_usd(self, prices: Mapping[str, str]) -> Decimal:
        """What was billed at `prices` (USD per online image); models without a price count as 0."""
        online = sum((Decimal(prices.get(m, "0")) * n for m, n in self.billed_by_model.items()), Decimal(0))
        batch = sum((Decimal(prices.get(m, "0")) * n for m, n in self.batch_lines_by_model.items()), Decimal(0))
        return online + batch * BATCH_DISCOUNT

    def as_dict(self, prices: Mapping[str, str]) -> dict[str, Any]:
        """JSON-ready counters; HTTP statuses become string keys."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, dict) else value
        out["requests"] = {k: {str(s): n for s, n in sorted(by.items())} for k, by in self.requests.items()}
        out["cost_usd"] = str(self.cost_usd(prices))
        return out
