"""What the Vertex emulator counted: enough for a test to prove what a client was billed for, and how often."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

NO_REPLY = 0  # the status recorded when the connection was closed without an HTTP reply
BATCH_DISCOUNT = Decimal("0.5")  # batch prediction bills half the online price


def _bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


@dataclass(slots=True)
class VertexStats:
    """Counters since start or the last reset."""

    requests: dict[str, dict[int, int]] = field(default_factory=dict)  # kind -> HTTP status -> count
    # Credentials.
    tokens_issued: int = 0
    tokens_refused: int = 0  # token requests answered with an OAuth2 error
    unauthenticated: int = 0  # 401s: no token, an unknown one or an expired one
    expired_tokens: int = 0  # of those, tokens that had expired
    permission_denied: int = 0  # 403s: a project not allowed
    express_requests: int = 0  # generateContent with an API key, no project
    # Online billing: an image generated is billed whether or not its reply arrived.
    images_billed: int = 0
    billed_by_prompt: dict[str, int] = field(default_factory=dict)
    billed_by_model: dict[str, int] = field(default_factory=dict)
    billed_by_project: dict[str, int] = field(default_factory=dict)  # project number, or "express"
    lost_replies: int = 0
    refusals: int = 0  # a candidate without an image (finishReason), not billed
    blocked: int = 0  # promptFeedback.blockReason and no candidate, not billed
    dsq_429s: int = 0  # Dynamic Shared Quota answers (drawn or from the capacity)
    peak_concurrent_requests: int = 0
    # Batch prediction: rows are billed when exported, so a cancelled or failed job's finished rows count.
    jobs_created: int = 0
    jobs_by_display_name: dict[str, int] = field(default_factory=dict)
    jobs_by_state: dict[str, int] = field(default_factory=dict)  # terminal states reached
    batch_rows_billed: int = 0  # image rows exported
    batch_rows_by_key: dict[str, int] = field(default_factory=dict)
    batch_rows_by_model: dict[str, int] = field(default_factory=dict)
    batch_rows_by_job: dict[str, int] = field(default_factory=dict)  # job id -> image rows billed
    batch_rows_refused: int = 0
    batch_rows_failed: int = 0
    # Cloud Storage.
    objects_written: int = 0
    objects_deleted: int = 0

    def record(self, kind: str, status: int) -> None:
        """Count one finished request of a kind (token, generate, job, storage)."""
        by_status = self.requests.setdefault(kind, {})
        by_status[status] = by_status.get(status, 0) + 1

    def count(self, kind: str, status: int | None = None) -> int:
        by_status = self.requests.get(kind, {})
        return sum(by_status.values()) if status is None else by_status.get(status, 0)

    def bill_image(self, model: str, prompt: str, project: str) -> None:
        self.images_billed += 1
        _bump(self.billed_by_prompt, prompt)
        _bump(self.billed_by_model, model)
        _bump(self.billed_by_project, project)

    def bill_row(self, model: str, key: str, job_id: str) -> None:
        self.batch_rows_billed += 1
        _bump(self.batch_rows_by_key, key)
        _bump(self.batch_rows_by_model, model)
        _bump(self.batch_rows_by_job, job_id)

    def refuse(self, blocked: bool) -> None:
        if blocked:
            self.blocked += 1
        else:
            self.refusals += 1

    def created_job(self, display_name: str) -> None:
        self.jobs_created += 1
        _bump(self.jobs_by_display_name, display_name)

    def ended_job(self, state: str) -> None:
        _bump(self.jobs_by_state, state)

    def cost_usd(self, prices: Mapping[str, str]) -> Decimal:
        """What was billed at `prices` (USD per online image); batch rows at half; models without a price are 0."""
        online = sum((Decimal(prices.get(m, "0")) * n for m, n in self.billed_by_model.items()), Decimal(0))
        batch = sum((Decimal(prices.get(m, "0")) * n for m, n in self.batch_rows_by_model.items()), Decimal(0))
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
