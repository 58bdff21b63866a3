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


def _plain(value: Any) -> Any:
    """A copy a JSON encoder can take and a later count cannot change."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, list) else value


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
    # Billing is counted when a batch ends, for the image lines it finished (all of a succeeded batch's).
    batch_lines_billed: int = 0
    batch_lines_by_key: dict[str, int] = field(default_factory=dict)
    batch_lines_by_model: dict[str, int] = field(default_factory=dict)
    batch_lines_by_batch: dict[str, int] = field(default_factory=dict)  # batches/... -> its billed lines
    billed_keys_by_batch: dict[str, list[str]] = field(default_factory=dict)  # batches/... -> keys billed
    display_name_by_batch: dict[str, str] = field(default_factory=dict)  # every batch created
    state_by_batch: dict[str, str] = field(default_factory=dict)  # every batch ended: its terminal state
    image_sha256_by_key: dict[str, str] = field(default_factory=dict)  # the image a billed line's response holds
    batch_lines_failed: int = 0
    batch_lines_refused: int = 0
    batch_lines_omitted: int = 0  # billed lines left out of their responses file (batch_omit_line_rate)
    omitted_keys_by_batch: dict[str, list[str]] = field(default_factory=dict)
    # batches that ended with finished lines and no responses file (batch_ended_no_file_rate): which of their
    # keys were billed cannot be read by a client, only how many (batchStats)
    batches_without_file: list[str] = field(default_factory=list)
    results_files_gone: int = 0  # responses files gone as soon as made (results_gone_rate)
    expired_file_answers: int = 0  # 404s for a file past its time to live
    gone_file_answers: int = 0  # answers for a responses file that is gone (results_gone_status)
    batch_create_gateway_errors: int = 0  # batches made, then answered by a gateway 502/504
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

    def bill_line(self, model: str, key: str, batch: str = "", image_sha256: str = "") -> None:
        """One batch line billed: by key, model and batch, with the sha256 of the image its response holds."""
        self.batch_lines_billed += 1
        _bump(self.batch_lines_by_key, key)
        _bump(self.batch_lines_by_model, model)
        _bump(self.batch_lines_by_batch, batch)
        self.billed_keys_by_batch.setdefault(batch, []).append(key)
        if image_sha256:
            self.image_sha256_by_key[key] = image_sha256

    def omit_line(self, batch: str, key: str) -> None:
        self.batch_lines_omitted += 1
        self.omitted_keys_by_batch.setdefault(batch, []).append(key)

    def refuse(self, reason: str, blocked: bool) -> None:
        if blocked:
            self.blocked += 1
        else:
            self.refusals += 1
        _bump(self.refusals_by_reason, reason)

    def created_batch(self, name: str, display_name: str) -> None:
        self.batches_created += 1
        _bump(self.batches_by_display_name, display_name)
        self.display_name_by_batch[name] = display_name

    def ended_batch(self, name: str, state: str) -> None:
        _bump(self.batches_by_state, state)
        self.state_by_batch[name] = state

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
            out[name] = _plain(value)
        out["requests"] = {k: {str(s): n for s, n in sorted(by.items())} for k, by in self.requests.items()}
        out["cost_usd"] = str(self.cost_usd(prices))
        return out
