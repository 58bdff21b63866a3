"""A batch API in memory behind the `BatchClient` boundary: no network, time read from the clock passed in.

A created batch runs `run_s` of that clock, its lines finishing one after another in file order (line i of n at
`created + run_s * (i + 1) / n`), then ends as its `BatchScript` says: SUCCEEDED with every line, or FAILED,
CANCELLED or EXPIRED with the first `finished` lines done. A cancel ends it at once with the lines done by
then. Each line ends as its prompt's `Fate` says (an image by default). What the API billed is settled when a
batch ends (as a real one bills a finished batch), whether or not anyone looks: every finished line that made
an image (IMAGE, MALFORMED, OMITTED), once per batch, in `billed`, per batch and key. A create doubled by a
fault bills twice, as the real API does.

The fault switches are the sequences the batch runner must survive: a create answered CreateUnknown after
creating (or not creating) the batch, listings that lag behind a create (`listing_lag_s`) or lose a page
(ListingIncomplete), the requests file dropped before the create (NotCreated, input missing), a refused create,
results gone (Gone), results cut mid-stream (ResultsCut), and lines counted as succeeded but left out of the
results. The provider's limits (`BatchLimits`) are the fake's own: a create past `max_concurrent` running
batches is answered RateLimited and counted in `over_limit`, as a test's proof the runner kept within them.
"""

from __future__ import annotations

import collections
import enum
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batcher.emulator.images import encode_png
from batcher.models import CallRecord
from batcher.providers.base import (
    Absent,
    BatchInfo,
    BatchLimits,
    BatchState,
    BatchStats,
    Created,
    CreateOutcome,
    CreateUnknown,
    DoneOutcome,
    FailureKind,
    FindOutcome,
    Found,
    GetOutcome,
    Gone,
    Got,
    Image,
    LineKind,
    ListingIncomplete,
    NotCreated,
    Ok,
    Problem,
    RateLimited,
    Refused,
    Request,
    ResultLine,
    ResultsCut,
    ResultStream,
    ShardWritten,
    Uploaded,
    UploadOutcome,
    write_shard_lines,
)
from batcher.ratelimit import RateGate

LINE_PRICE = 33_500  # micro-dollars a billed line costs at this fake API (Gemini's batch price)
LIMITS = BatchLimits(max_requests=1000, max_bytes=10_000_000)  # the fake's own, unless a test sets others
PAGE_SIZE = 2  # batches on a listing's page: small, so a listing of a few batches takes several pages


class Fate(enum.Enum):
    """How a line ends, once its batch runs it."""

    IMAGE = "image"  # an image: billed
    REFUSED = "refused"  # no image on purpose (IMAGE_SAFETY): counted succeeded, not billed
    FAILED = "failed"  # an error Status: counted failed, not billed
    MALFORMED = "malformed"  # a line no client can read, though an image was made: billed
    OMITTED = "omitted"  # an image, billed and counted succeeded, but left out of the results file


_BILLED = (Fate.IMAGE, Fate.MALFORMED, Fate.OMITTED)
_SUCCEEDED = (Fate.IMAGE, Fate.REFUSED, Fate.MALFORMED, Fate.OMITTED)  # lines with a response, as the API counts


class CreateFault(enum.Enum):
    """What one create answers instead of Created."""

    UNKNOWN_CREATED = "unknown, created"  # CreateUnknown, though the batch was made (and runs, and bills)
    UNKNOWN_NOT_CREATED = "unknown, not created"  # CreateUnknown, and nothing was made
    INPUT_MISSING = "input missing"  # the requests file is dropped: NotCreated, input_missing
    REFUSED = "refused"  # NotCreated, not retryable (a bad request)
    NOT_SENT = "not sent"  # NotCreated, retryable (the connection was refused)
    RATE_LIMITED = "rate limited"  # RateLimited: not created


@dataclass(frozen=True)
class BatchScript:
    """How a created batch behaves (`FakeBatchClient.script_batches`, one per create, in order)."""

    ending: BatchState = BatchState.SUCCEEDED
    finished: int | None = None  # lines done before an ending other than SUCCEEDED (None: every line)
    run_s: float | None = None  # from create to its ending (None: the client's)
    results_gone: bool = False  # its results file is no longer at the API when downloaded (Gone)
    cuts: int = 0  # downloads of its results that break off halfway (ResultsCut) before one reads whole
    error: str | None = None  # why it FAILED, as the API says


@dataclass
class FakeBatch:
    """One batch the fake made: what it holds, and where it stands (read it in tests, never change it)."""

    name: str
    display_name: str
    input_file: str
    keys: list[tuple[str, str]]  # (key, prompt), in file order
    fates: dict[str, Fate]  # by key: drawn from its prompt's queue when the batch was made
    created_at: float
    script: BatchScript
    run_s: float
    ended_at: float | None = None  # set once settled
    done: int = 0  # lines finished (a prefix of `keys`), once ended
    deleted: bool = False
    cuts: int = 0

    @property
    def ends_at(self) -> float:
        return self.ended_at if self.ended_at is not None else self.created_at + self.run_s

    def finished_by(self, now: float) -> int:
        if self.ended_at is not None:
            return self.done
        n = len(self.keys)
        script = self.script
        most = n if script.ending is BatchState.SUCCEEDED or script.finished is None else min(n, script.finished)
        if not n or self.run_s <= 0:
            return most
        return min(most, int((now - self.created_at) / self.run_s * n + 1e-9))


class FakeBatchClient:
    """`BatchClient` in memory. `clock`: the test's wall clock (epoch seconds), which moves batches on;
    `run_s`: how long a batch runs; `listing_lag_s`: how long a created batch is missing from listings."""

    key_env = "FAKE_API_KEY"

    def __init__(
        self,
        name: str = "fake",
        *,
        clock: Callable[[], float] = time.time,
        limits: BatchLimits = LIMITS,
        run_s: float = 60.0,
        listing_lag_s: float = 0.0,
        price_micros: int = LINE_PRICE,
    ) -> None:
        self.name = name
        self.gate = RateGate(None)
        self.clock = clock
        self.limits = limits
        self.run_s = run_s
        self.listing_lag_s = listing_lag_s
        self.price_micros = price_micros
        self.fates: dict[str, collections.deque[Fate]] = collections.defaultdict(collections.deque)
        self.create_faults: collections.deque[CreateFault] = collections.deque()
        self.batch_scripts: collections.deque[BatchScript] = collections.deque()
        self.failing_listings = 0  # the next listings that lose a page
        self.invalid_prompts: set[str] = set()  # requests write_shard leaves out (cannot go on the wire)
        # the fake's own accounting
        self.files: dict[str, list[tuple[str, str]]] = {}  # uploaded requests files: name -> (key, prompt)
        self.uploaded: dict[str, int] = {}  # every requests file uploaded: name -> bytes
        self.batches: dict[str, FakeBatch] = {}  # every batch made, by name, in order
        self.billed: dict[str, dict[str, int]] = {}  # batch -> key -> price, settled as each batch ends
        self.creates: list[float] = []  # when each create request left (the clock's)
        self.listings: list[tuple[float, bool]] = []  # when each listing ran, and whether it came back whole
        self.over_limit = 0  # creates refused for running past `limits.max_concurrent`
        self.peak_running = 0  # most batches running at once, as seen at each create
        self._ids = itertools.count(1)

    # --- the test's side ----------------------------------------------------------------------------------

    def fate(self, prompt: str, *fates: Fate) -> None:
        """How the prompt's next lines end (one per batch it runs in), after what was set before."""
        self.fates[prompt].extend(fates)

    def script_creates(self, *faults: CreateFault) -> None:
        self.create_faults.extend(faults)

    def script_batches(self, *scripts: BatchScript) -> None:
        self.batch_scripts.extend(scripts)

    def running(self, now: float | None = None) -> list[FakeBatch]:
        """Batches made and not ended by `now` (deleted ones run on)."""
        at = self.clock() if now is None else now
        return [b for b in self.batches.values() if b.ends_at > at]

    def settle(self) -> None:
        """Settle (and bill) every batch that has ended by now, looked at or not."""
        now = self.clock()
        for batch in self.batches.values():
            self._settled(batch, now)

    @property
    def billed_by_key(self) -> collections.Counter[str]:
        self.settle()
        return collections.Counter(k for lines in self.billed.values() for k in lines)

    @property
    def billed_lines(self) -> int:
        self.settle()
        return sum(len(lines) for lines in self.billed.values())

    @property
    def billed_micros(self) -> int:
        self.settle()
        return sum(sum(lines.values()) for lines in self.billed.values())

    # --- the Protocol -----------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeBatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gate.close()

    def write_shard(self, path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
        def line(key: str, request: Request) -> dict[str, Any]:
            if request.prompt in self.invalid_prompts:
                raise ValueError("this fake API cannot take that request")
            return {"key": key, "model": request.model, "prompt": request.prompt}

        return write_shard_lines(path, items, line)

    async def upload(self, path: Path, display_name: str) -> UploadOutcome:
        await self.gate.acquire(priority=False)
        at = self.clock()
        data = path.read_bytes()
        name = f"files/fake-input-{next(self._ids)}"
        self.files[name] = [(d["key"], d["prompt"]) for d in map(json.loads, data.splitlines())]
        self.uploaded[name] = len(data)
        return Uploaded(self._call("upload", at, name), name, len(data))

    async def create(
        self, model: str, file_name: str, display_name: str, *, before_send: Callable[[], Awaitable[None]]
    ) -> CreateOutcome:
        await self.gate.acquire(priority=False)
        await before_send()  # may raise: then nothing leaves
        at = self.clock()
        self.creates.append(at)
        fault = self.create_faults.popleft() if self.create_faults else None
        if fault is CreateFault.INPUT_MISSING:
            self.files.pop(file_name, None)
        if fault is CreateFault.RATE_LIMITED:
            return RateLimited(self._call("batch_create", at, status=429), "HTTP 429", wait_s=None)
        if fault in (CreateFault.REFUSED, CreateFault.NOT_SENT):
            msg = "HTTP 400: refused" if fault is CreateFault.REFUSED else "cannot connect"
            return NotCreated(self._call("batch_create", at, detail=msg), msg, retryable=fault is CreateFault.NOT_SENT)
        if file_name not in self.files:
            msg = f"HTTP 400: {file_name} does not exist"
            return NotCreated(self._call("batch_create", at, detail=msg), msg, input_missing=True)
        running = len(self.running(at))
        cap = self.limits.max_concurrent
        if cap is not None and running >= cap:
            self.over_limit += 1
            return RateLimited(self._call("batch_create", at, status=429), "HTTP 429: too many batches", None)
        if fault is CreateFault.UNKNOWN_NOT_CREATED:
            return CreateUnknown(self._call("batch_create", at, detail="HTTP 503"), "HTTP 503")
        script = self.batch_scripts.popleft() if self.batch_scripts else BatchScript()
        name = f"batches/fake-{next(self._ids)}"
        run_s = self.run_s if script.run_s is None else script.run_s
        keys = list(self.files[file_name])
        fates = {k: self.fates[p].popleft() if self.fates[p] else Fate.IMAGE for k, p in keys}
        batch = FakeBatch(name, display_name, file_name, keys, fates, at, script, run_s, cuts=script.cuts)
        self.batches[name] = batch
        self.peak_running = max(self.peak_running, running + 1)
        if fault is CreateFault.UNKNOWN_CREATED:
            return CreateUnknown(self._call("batch_create", at, detail="HTTP 503"), "HTTP 503: made all the same")
        return Created(self._call("batch_create", at, name), self._info(batch, at))

    async def get(self, name: str) -> GetOutcome:
        await self.gate.acquire(priority=True)
        at = self.clock()
        batch = self.batches.get(name)
        if batch is None or batch.deleted:
            return Gone(self._call("batch_get", at, name, status=404), f"HTTP 404: {name}")
        return Got(self._call("batch_get", at, name), self._info(batch, at))

    async def find_by_display_name(self, display_name: str) -> FindOutcome:
        """One call a page of PAGE_SIZE batches, newest first; a failing listing loses its last page."""
        await self.gate.acquire(priority=True)
        at = self.clock()
        listed = [
            b for b in reversed(self.batches.values()) if not b.deleted and b.created_at + self.listing_lag_s <= at
        ]
        pages = max(1, -(-len(listed) // PAGE_SIZE))
        calls = tuple(self._call("batch_list", at) for _ in range(pages))
        self.listings.append((at, not self.failing_listings))
        if self.failing_listings:
            self.failing_listings -= 1
            return ListingIncomplete("a page of the batch list failed: HTTP 503", calls)
        matches = tuple(self._info(b, at) for b in listed if b.display_name == display_name)
        return Found(matches, calls) if matches else Absent(calls)

    @asynccontextmanager
    async def results(self, where: str) -> AsyncIterator[ResultStream | Problem]:
        await self.gate.acquire(priority=True)
        at = self.clock()
        batch = next((b for b in self.batches.values() if _results_file(b) == where), None)
        if batch is None or batch.script.results_gone:
            yield Gone(self._call("download", at, where, status=404), f"HTTP 404: {where}")
            return
        cut = batch.cuts > 0
        batch.cuts -= 1 if cut else 0
        yield FakeResults(batch, self._call("download", at, where), cut)

    async def cancel(self, name: str) -> DoneOutcome:
        await self.gate.acquire(priority=True)
        at = self.clock()
        batch = self.batches.get(name)
        if batch is None:
            return Gone(self._call("batch_cancel", at, name, status=404), f"HTTP 404: {name}")
        self._settled(batch, at)
        if batch.ended_at is not None:
            return Refused(self._call("batch_cancel", at, name, status=400), "FAILED_PRECONDITION: it has ended")
        batch.done, batch.ended_at = batch.finished_by(at), at
        batch.script = BatchScript(BatchState.CANCELLED, batch.done, batch.run_s, batch.script.results_gone)
        self._bill(batch)
        return Ok(self._call("batch_cancel", at, name))

    async def delete_batch(self, name: str) -> DoneOutcome:
        await self.gate.acquire(priority=True)
        at = self.clock()
        batch = self.batches.get(name)
        if batch is None or batch.deleted:
            return Gone(self._call("batch_delete", at, name, status=404), f"HTTP 404: {name}")
        batch.deleted = True  # it runs on and bills, as deleting a real one does
        return Ok(self._call("batch_delete", at, name))

    async def delete_file(self, name: str) -> DoneOutcome:
        await self.gate.acquire(priority=True)
        self.files.pop(name, None)
        return Ok(self._call("file_delete", self.clock(), name))

    def results_outliving(self, display_name: str) -> str | None:
        return None  # as the Gemini API: a deleted batch's results go with it

    # --- inside -----------------------------------------------------------------------------------------

    def _settled(self, batch: FakeBatch, now: float) -> None:
        """A batch past its ending: its finished lines fixed and billed, once."""
        if batch.ended_at is not None or now < batch.ends_at:
            return
        batch.done = batch.finished_by(batch.ends_at)
        batch.ended_at = batch.ends_at
        self._bill(batch)

    def _bill(self, batch: FakeBatch) -> None:
        lines: dict[str, int] = {}
        for key, _ in batch.keys[: batch.done]:
            if batch.fates[key] in _BILLED:
                lines[key] = self.price_micros
        self.billed[batch.name] = lines

    def _info(self, batch: FakeBatch, now: float) -> BatchInfo:
        self._settled(batch, now)
        done = batch.finished_by(now)
        fates = [batch.fates[k] for k, _ in batch.keys[:done]]
        succeeded = sum(1 for f in fates if f in _SUCCEEDED)
        stats = BatchStats(len(batch.keys), succeeded, done - succeeded, len(batch.keys) - done)
        if batch.ended_at is None:
            state = BatchState.RUNNING if done or now > batch.created_at else BatchState.PENDING
            return BatchInfo(batch.name, batch.display_name, state, stats)
        file = _results_file(batch) if batch.done else None
        return BatchInfo(batch.name, batch.display_name, batch.script.ending, stats, file, batch.script.error)

    def _call(
        self, kind: str, at: float, remote: str | None = None, *, status: int = 200, detail: str | None = None
    ) -> CallRecord:
        if status == 429:
            self.gate.rate_limited(None)
        else:
            self.gate.answered()
        outcome = "ok" if status == 200 and detail is None else ("rate_limited" if status == 429 else "failed")
        return CallRecord(kind, outcome, status, 0.0, at, remote, detail=detail)


class FakeResults(ResultStream):
    """A batch's results: its finished lines but the omitted ones, judged; `cut`: breaks off halfway."""

    def __init__(self, batch: FakeBatch, call: CallRecord, cut: bool) -> None:
        self._batch, self._call, self._cut = batch, call, cut

    @property
    def calls(self) -> tuple[CallRecord, ...]:
        return (self._call,)

    async def lines(self) -> AsyncIterator[ResultLine]:
        finished = self._batch.keys[: self._batch.done]
        for i, (key, prompt) in enumerate(finished):
            if self._cut and i >= len(finished) // 2:
                raise ResultsCut(f"the results download broke off after {i} lines")
            self.lines_read += 1
            fate = self._batch.fates[key]
            if fate is Fate.IMAGE:
                yield ResultLine(key, LineKind.IMAGE, Image(data=encode_png(prompt, 16, 16), mime_type="image/png"))
            elif fate is Fate.REFUSED:
                yield ResultLine(key, LineKind.REFUSED, reason="IMAGE_SAFETY", failure=FailureKind.BLOCKED)
            elif fate is Fate.FAILED:
                yield ResultLine(key, LineKind.FAILED, reason="the line failed: internal (code 13)",
                                 failure=FailureKind.GENERATION, error_code=13)  # fmt: skip
            elif fate is Fate.MALFORMED:
                yield ResultLine(key, LineKind.MALFORMED, reason="a results line with neither response nor error")


def _results_file(batch: FakeBatch) -> str:
    return f"files/fake-results-{batch.name.removeprefix('batches/fake-')}"
