"""What the emulator counted: enough for a test to prove what a client did and did not do."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

NO_REPLY = 0  # the status recorded when the connection was closed without an HTTP reply
RATE_LIMITED = 429
API_KINDS = ("create", "query")
KINDS = ("create", "query", "download")  # an event stores its kind as an index into this
_KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}


class RequestEvent(NamedTuple):
    """One request: when it arrived, what it was, how it was answered."""

    t: float  # event-loop clock (monotonic) at arrival, seconds
    wall: float  # wall clock at arrival, seconds since the epoch
    kind: str  # create | query | download
    status: int  # HTTP status sent; NO_REPLY if the connection was closed instead


@dataclass(slots=True)
class Stats:
    """Counters since start or the last reset; `emu.stats` counts finished generations before returning it."""

    requests: dict[str, dict[int, int]] = field(default_factory=dict)  # kind -> HTTP status -> count
    creates_accepted: int = 0  # creates that made a task id, lost ones included: what was billed
    accepted_by_prompt: dict[str, int] = field(default_factory=dict)
    lost_creates: int = 0  # created, then the connection was aborted before the reply
    accepted_errors: int = 0  # created, then answered 502/504 by the gateway (accepted_error_rate)
    not_image_files: int = 0  # downloads answered with a page that is not an image (not_image_rate)
    # queries and downloads answered 404 for a task the API had forgotten, by the task's prompt
    forgotten_by_prompt: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # connections closed without a reply and without doing anything
    malformed: int = 0  # HTTP 200 replies whose body was not JSON
    successes: int = 0  # tasks whose generation reached Success
    failures: int = 0  # ... reached Failed
    cancels: int = 0  # ... reached Cancelled
    polls: int = 0  # queries answered with a task's status
    downloads: int = 0  # files sent in full
    truncated_downloads: int = 0
    expired_downloads: int = 0  # answered 410
    hostile_files: int = 0  # successful tasks whose file URL attacks the client (hostile_file_rate)
    hostile_downloads: int = 0  # requests answered from a hostile file URL (traversal ones count as downloads too)
    rate_limited: int = 0  # answered 429
    peak_concurrent_requests: int = 0
    peak_concurrent_generations: int = 0
    events_dropped: int = 0  # events not kept once max_events were stored
    max_events: int = 4_000_000
    # Events live in parallel arrays, about 19 bytes each instead of ~170 for a tuple of objects.
    _t: array[float] = field(default_factory=lambda: array("d"), repr=False)
    _wall: array[float] = field(default_factory=lambda: array("d"), repr=False)
    _kind: array[int] = field(default_factory=lambda: array("B"), repr=False)
    _status: array[int] = field(default_factory=lambda: array("H"), repr=False)

    @property
    def forgotten_answers(self) -> int:
        return sum(self.forgotten_by_prompt.values())

    def forgot(self, prompt: str) -> None:
        """Count one 404 answered for a task the API had forgotten."""
        self.forgotten_by_prompt[prompt] = self.forgotten_by_prompt.get(prompt, 0) + 1

    def record(self, kind: str, status: int, t: float, wall: float) -> None:
        """Count one finished request."""
        by_status = self.requests.get(kind)
        if by_status is None:
            by_status = self.requests[kind] = {}
        by_status[status] = by_status.get(status, 0) + 1
        if len(self._t) < self.max_events:
            self._t.append(t)
            self._wall.append(wall)
            self._kind.append(_KIND_CODES[kind])
            self._status.append(status)
        else:
            self.events_dropped += 1

    @property
    def events(self) -> list[RequestEvent]:
        """Every kept request in arrival order (built on each access)."""
        return [
            RequestEvent(t, wall, KINDS[kind], status)
            for t, wall, kind, status in zip(self._t, self._wall, self._kind, self._status, strict=True)
        ]

    def count(self, kind: str, status: int | None = None) -> int:
        """Requests of a kind, optionally only those answered with one status."""
        by_status = self.requests.get(kind, {})
        return sum(by_status.values()) if status is None else by_status.get(status, 0)

    def accepted_times(self, kinds: Iterable[str] = API_KINDS) -> list[float]:
        """Arrival times (loop clock) of requests the rate limiter let through, in order."""
        wanted = frozenset(_KIND_CODES[kind] for kind in kinds)
        return sorted(
            t
            for t, kind, status in zip(self._t, self._kind, self._status, strict=True)
            if kind in wanted and status != RATE_LIMITED
        )

    def as_dict(self, include_events: bool = True) -> dict[str, Any]:
        """JSON-ready counters; HTTP statuses become string keys, events become [t, wall, kind, status]."""
        out: dict[str, Any] = {
            "requests": {kind: {str(s): n for s, n in sorted(by.items())} for kind, by in self.requests.items()},
            "creates_accepted": self.creates_accepted,
            "accepted_by_prompt": dict(self.accepted_by_prompt),
            "lost_creates": self.lost_creates,
            "accepted_errors": self.accepted_errors,
            "not_image_files": self.not_image_files,
            "forgotten_answers": self.forgotten_answers,
            "forgotten_by_prompt": dict(self.forgotten_by_prompt),
            "dropped": self.dropped,
            "malformed": self.malformed,
            "successes": self.successes,
            "failures": self.failures,
            "cancels": self.cancels,
            "polls": self.polls,
            "downloads": self.downloads,
            "truncated_downloads": self.truncated_downloads,
            "expired_downloads": self.expired_downloads,
            "hostile_files": self.hostile_files,
            "hostile_downloads": self.hostile_downloads,
            "rate_limited": self.rate_limited,
            "peak_concurrent_requests": self.peak_concurrent_requests,
            "peak_concurrent_generations": self.peak_concurrent_generations,
            "events_dropped": self.events_dropped,
        }
        if include_events:
            out["events"] = [list(e) for e in self.events]
        return out
