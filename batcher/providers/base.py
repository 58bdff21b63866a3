"""The provider boundary: the worker's whole vocabulary for an image API.

A provider turns a task's request into API calls and every reply into one typed outcome. Three verbs:
`submit` a request, `check` a submission the API holds, `fetch` a finished image into a sink. An API that
answers with the image at once (Gemini online) returns `Done` from `submit`; one that queues (LinkModel's task,
a Gemini batch) returns `Accepted` with a handle to `check`. Every outcome carries the call for the ledger.
The API key stays inside the provider: never in an outcome, a record or a message.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from batcher.models import CallRecord
from batcher.ratelimit import RateGate


@dataclass(frozen=True)
class Request:
    """What one task asks for, in the catalog's canonical notation (sizes as `16x9`); the provider translates.
    `images` are resolved already: URLs or `data:` URIs."""

    model: str
    prompt: str
    quality: str
    size: str
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image:
    """A finished image: where to fetch it (`url`), or its bytes as the reply held them (`data`)."""

    url: str | None = None
    data: bytes | None = None
    mime_type: str | None = None


class FailureKind(enum.StrEnum):
    INVALID = "invalid"  # the API refused the request itself (400): trying again cannot help
    GENERATION = "generation"  # the generation failed or was cancelled: not billed, may be tried again
    BLOCKED = "blocked"  # the model gave no image on purpose (IMAGE_SAFETY and the like): not billed


@dataclass(frozen=True)
class Outcome:
    call: CallRecord


@dataclass(frozen=True)
class Accepted(Outcome):
    """The API holds the request: `check` the handle until it is done."""

    handle: str
    price_micros: int | None = None  # the price the API reported, if it did


@dataclass(frozen=True)
class Running(Outcome):
    hint_s: float | None = None  # when the API suggests looking again, if it does


@dataclass(frozen=True)
class Done(Outcome):
    """The generation succeeded and is billed."""

    image: Image
    handle: str | None = None  # the API's id of the reply, where it gives one
    price_micros: int | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # what the API says it counted (image tokens)


@dataclass(frozen=True)
class Failed(Outcome):
    """The request ended without an image."""

    reason: str
    kind: FailureKind
    billed: bool = False


@dataclass(frozen=True)
class Unknown(Outcome):
    """A submit that may or may not have been accepted (and billed): the request left, no proof came back."""

    message: str


@dataclass(frozen=True)
class Transient(Outcome):
    """Not done, and safe to try again: a submit proven not accepted, or a check or fetch that failed."""

    message: str


@dataclass(frozen=True)
class RateLimited(Outcome):
    message: str
    wait_s: float | None = None  # the API's own hint (Retry-After, RetryInfo)


@dataclass(frozen=True)
class AuthRejected(Outcome):
    message: str


@dataclass(frozen=True)
class QuotaExhausted(Outcome):
    """A quota that will not come back within the run (a per-day quota): stop creating until `until`."""

    message: str
    until: float  # epoch seconds


@dataclass(frozen=True)
class SpendCapReached(Outcome):
    """The account's spending cap at the provider is reached (a 429 naming it): no wait brings it back, only a
    higher cap. Stop creating; nothing was created."""

    message: str


@dataclass(frozen=True)
class Gone(Outcome):
    """The API no longer knows the submission."""

    message: str


@dataclass(frozen=True)
class Fetched:
    """What became of a fetch: `ok`; else `retryable` (check again for a fresh result, then fetch once more)
    or refused for good. `call` is None when no request was made (the image came in the reply)."""

    ok: bool
    call: CallRecord | None
    message: str = ""
    retryable: bool = False


SubmitOutcome = (
    Accepted | Done | Failed | Unknown | Transient | RateLimited | AuthRejected | QuotaExhausted | SpendCapReached
)
CheckOutcome = Running | Done | Failed | Gone | Transient | RateLimited | AuthRejected


class Sink(Protocol):
    """Where a fetched image's bytes go (outputs.AtomicFile is one)."""

    def write(self, chunk: bytes) -> None: ...


class Provider(Protocol):
    """One API. Entered as an async context (it owns its HTTP session); every request passes `gate` first."""

    name: str
    gate: RateGate

    @property
    def key_env(self) -> str:
        """What to check when the API refuses the credential, for messages (never the secret itself)."""
        ...

    async def __aenter__(self) -> Provider: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def submit(self, request: Request, *, before_send: Callable[[], Awaitable[None]]) -> SubmitOutcome:
        """Send a request. `before_send` runs after the rate gate lets it go and just before its bytes leave:
        the worker commits its intent there, so the window in which a crash leaves it unknown is as small as
        the store allows. It may raise to cancel the request unsent."""
        ...

    async def check(self, handle: str) -> CheckOutcome: ...

    async def fetch(self, image: Image, sink: Sink) -> Fetched: ...
