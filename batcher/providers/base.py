"""The provider boundary: the worker's whole vocabulary for an image API, online and by batch.

A provider turns a task's request into API calls and every reply into one typed outcome. Three verbs:
`submit` a request, `check` a submission the API holds, `fetch` a finished image into a sink. An API that
answers with the image at once (Gemini online) returns `Done` from `submit`; one that queues (LinkModel's task,
a Gemini batch) returns `Accepted` with a handle to `check`. Every outcome carries the call for the ledger.
The API key stays inside the provider: never in an outcome, a record or a message.
"""

from __future__ import annotations

import abc
import enum
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
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


# --- by batch -------------------------------------------------------------------------------------------
# A batch API takes a file of requests, runs them within hours at a lower price and writes a file of results.
# The batch runner (runner/batch/) speaks only this vocabulary; each provider's client translates.


class BatchState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    UNSPECIFIED = "UNSPECIFIED"  # a state this client does not know: keep polling

    @property
    def is_done(self) -> bool:
        return self in (BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED)


@dataclass(frozen=True)
class BatchStats:
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the API describes it: `responses_file` is where its results are once it has ended (a file,
    or a folder of files, as its client names it), `error` why it FAILED."""

    name: str  # the API's resource name (batches/..., projects/.../batchPredictionJobs/...)
    display_name: str
    state: BatchState
    stats: BatchStats
    responses_file: str | None = None  # files/...
    error: str | None = None


@dataclass(frozen=True)
class Created(Outcome):
    batch: BatchInfo


@dataclass(frozen=True)
class NotCreated(Outcome):
    """Proven not created. `retryable`: the same create may be sent again (else the request itself is bad)."""

    message: str
    retryable: bool = False
    input_missing: bool = False  # the API no longer has the uploaded requests file: upload it again


@dataclass(frozen=True)
class CreateUnknown(Outcome):
    """The create left and no proof came back: a batch may exist and bill. Reconcile by listing."""

    message: str


@dataclass(frozen=True)
class Refused(Outcome):
    """A 4xx: the API will not do this, and asking again will not change that."""

    message: str


@dataclass(frozen=True)
class Uploaded(Outcome):
    file_name: str  # files/...
    size_bytes: int


@dataclass(frozen=True)
class Got(Outcome):
    batch: BatchInfo


@dataclass(frozen=True)
class Ok(Outcome):
    """Cancelled or deleted."""


@dataclass(frozen=True)
class Found:
    """Every batch of that display name, newest first (more than one: a create was doubled)."""

    batches: tuple[BatchInfo, ...]
    calls: tuple[CallRecord, ...]

    @property
    def batch(self) -> BatchInfo:
        return self.batches[0]


@dataclass(frozen=True)
class Absent:
    """No batch of that name, on a listing whose every page was fetched."""

    calls: tuple[CallRecord, ...]


@dataclass(frozen=True)
class ListingIncomplete:
    """A page could not be fetched: absence is not proven, so nothing may be created on its strength."""

    message: str
    calls: tuple[CallRecord, ...]


CreateOutcome = Created | NotCreated | CreateUnknown | RateLimited | AuthRejected
Problem = Transient | Gone | Refused | RateLimited | AuthRejected
UploadOutcome = Uploaded | Problem
GetOutcome = Got | Problem
DoneOutcome = Ok | Problem
FindOutcome = Found | Absent | ListingIncomplete


class LineKind(enum.StrEnum):
    IMAGE = "image"  # generated and billed
    REFUSED = "refused"  # the model gave no image on purpose (IMAGE_SAFETY, blockReason): not billed
    FAILED = "failed"  # an error Status, or a generation that ended without an image: not billed
    MALFORMED = "malformed"  # not a line this client can read (an image may have been made and billed)


@dataclass(frozen=True)
class ResultLine:
    """One line of a results file. `key` is None only when a malformed line did not even name one."""

    key: str | None
    kind: LineKind
    image: Image | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    response_id: str | None = None
    reason: str = ""
    failure: FailureKind | None = None  # of a refused or failed line
    error_code: int | None = None  # the google.rpc.Status code of a failed line


class ResultsCut(Exception):
    """The results stream broke off (a reset, a timeout, a truncated body): download it again."""


@dataclass(frozen=True)
class ShardWritten:
    bytes_written: int
    lines: int
    invalid: tuple[tuple[str, str], ...]  # (key, why): requests that cannot go on the wire, left out


def write_shard_lines(
    path: Path, items: Iterable[tuple[str, Request]], line: Callable[[str, Request], dict[str, Any]]
) -> ShardWritten:
    """A batch's JSONL requests file: `line(key, request)` as one JSON line per item, one in memory at a time.
    A request `line` refuses (ValueError: it cannot go on the wire) is left out and named in `invalid`; a key
    seen twice raises ValueError (results are matched by key). Every batch client writes its file through this."""
    seen: set[str] = set()
    invalid: list[tuple[str, str]] = []
    written = lines = 0
    with open(path, "wb") as out:
        for key, request in items:
            if key in seen:
                raise ValueError(f"the key {key!r} appears twice in one batch")
            seen.add(key)
            try:
                doc = line(key, request)
            except ValueError as e:
                invalid.append((key, str(e)))
                continue
            data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
            out.write(data)
            written += len(data)
            lines += 1
    return ShardWritten(written, lines, tuple(invalid))


class ResultStream(abc.ABC):
    """A batch's results being read: iterate `lines()` once. `calls` are the requests it made (a download per
    results file), final once the iteration ended."""

    lines_read: int = 0

    @property
    @abc.abstractmethod
    def calls(self) -> tuple[CallRecord, ...]: ...

    @abc.abstractmethod
    def lines(self) -> AsyncIterator[ResultLine]:
        """Each line judged, in the results' order. Raises ResultsCut when the stream breaks off."""


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may hold, and how many may run at once, at this provider."""

    max_requests: int
    max_bytes: int
    max_concurrent: int | None = None  # batches running at once; None: the provider sets no limit we know


class BatchClient(Protocol):
    """One provider's batch API. Entered as an async context; every request passes `gate` first (polls,
    listings and downloads with priority: they make nothing). Nothing here retries: the caller decides, because
    the one call that bills (`create`) is not idempotent."""

    name: str  # the provider's name, as the registry and the store know it
    gate: RateGate

    @property
    def key_env(self) -> str:
        """What to check when the API refuses the credential, for messages (never the secret itself)."""
        ...

    @property
    def limits(self) -> BatchLimits: ...

    async def __aenter__(self) -> BatchClient: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def write_shard(self, path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
        """A batch's requests file, one line per (key, request), one line in memory at a time (blocking: run it
        in a thread). A request that cannot go on the wire is left out and named; a key twice raises ValueError."""
        ...

    async def upload(self, path: Path, display_name: str) -> UploadOutcome:
        """The requests file, where the API reads it. Not billed: a lost reply is only Transient."""
        ...

    async def create(
        self, model: str, file_name: str, display_name: str, *, before_send: Callable[[], Awaitable[None]]
    ) -> CreateOutcome:
        """Create the batch. `before_send` runs after the gate, just before the bytes leave (the caller commits
        its intent there; it may raise, and then nothing was sent). CreateUnknown: reconcile by listing."""
        ...

    async def get(self, name: str) -> GetOutcome: ...

    async def find_by_display_name(self, display_name: str) -> FindOutcome:
        """Every batch named so. Absent only when a complete listing came back: a gap is never proof."""
        ...

    def results(self, where: str) -> AbstractAsyncContextManager[ResultStream | Problem]:
        """``async with client.results(info.responses_file) as got``: a ResultStream to iterate, or why not."""
        ...

    async def cancel(self, name: str) -> DoneOutcome:
        """Lines not yet run are not billed; lines done stay billed, and are collected."""
        ...

    async def delete_batch(self, name: str) -> DoneOutcome: ...

    async def delete_file(self, name: str) -> DoneOutcome:
        """An uploaded requests file, or results (a file or a folder of them), once they are settled."""
        ...

    def results_outliving(self, display_name: str) -> str | None:
        """Where the results of the batch of this display name stay once the API no longer knows the batch (for
        `results`), or None where they go with it. Vertex deletes only an ended job and leaves its output in
        Cloud Storage: what it billed can still be collected, not paid for again."""
        ...
