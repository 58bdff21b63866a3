"""Image APIs in memory behind both provider boundaries: no network, replies scripted or drawn at random, time
read from a clock passed in. Shipped in the package (as procrastinate ships its InMemoryConnector) so that the
runners' rules get fast tests on a clock the test controls, and so that a caller can drive a `Runner` or a
`BatchRunner` without an API (a dry run).

`FakeProvider` is the online `Provider`; `FakeBatchClient` (fake_batch.py) the `BatchClient`. Each keeps its own
accounting of what it accepted and billed: that is the money truth a test holds the store's ledger to, never the
ledger to itself.

Online, each prompt has a script of what its submits and its checks answer, in order; past the script a submit
is accepted (or drawn from `rates`, or answered with the image at once when `image_in_reply`) and a check finds
the image done after `generation_s` of the clock. Script steps are outcomes built by the helpers below (their
call record is stamped by the fake when it answers, as `linkmodel_api.py` builds one per HTTP call), or
callables of the request for what an outcome cannot say (hang, raise). The fake passes the rate gate and calls
`before_send` exactly as a real provider does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar

from batcher.emulator.images import encode_png
from batcher.models import CallRecord
from batcher.providers.base import (
    Accepted,
    AuthRejected,
    CheckOutcome,
    Done,
    Failed,
    FailureKind,
    Fetched,
    Gone,
    Image,
    Outcome,
    QuotaExhausted,
    RateLimited,
    Request,
    Running,
    Sink,
    SubmitOutcome,
    Transient,
    Unknown,
)
from batcher.ratelimit import RateGate

PRICE = 67_000  # micro-dollars a generation costs at this fake API
KEY = "sk-fake-0123456789"  # the key the fake holds: it must never reach a message or a record

OutcomeT = TypeVar("OutcomeT", bound=Outcome)
_UNSTAMPED = CallRecord("unstamped", "unstamped", None, 0.0, 0.0)  # replaced when the fake answers

# --- script steps ---------------------------------------------------------------------------------------


def accepted(handle: str | None = None, price_micros: int | None = None) -> Accepted:
    """Accepted; `handle` None: the fake names it."""
    return Accepted(_UNSTAMPED, handle or "", price_micros)


def running(hint_s: float | None = None) -> Running:
    return Running(_UNSTAMPED, hint_s)


def done(data: bytes | None = None) -> Done:
    """Done. At a submit the reply holds the bytes (the Gemini online shape), at a check a URL serves them;
    `data` None: a small valid PNG of the prompt."""
    return Done(_UNSTAMPED, Image(data=data))


def failed(kind: FailureKind, reason: str = "") -> Failed:
    return Failed(_UNSTAMPED, reason or f"scripted {kind}", kind)


def unknown(message: str = "no reply: timed out after sending") -> Unknown:
    return Unknown(_UNSTAMPED, message)


def transient(message: str = "HTTP 503") -> Transient:
    return Transient(_UNSTAMPED, message)


def rate_limited(wait_s: float | None = None) -> RateLimited:
    return RateLimited(_UNSTAMPED, "HTTP 429", wait_s)


def auth_rejected(message: str = "HTTP 401") -> AuthRejected:
    return AuthRejected(_UNSTAMPED, message)


def quota_exhausted(until: float, message: str = "RESOURCE_EXHAUSTED: requests per day") -> QuotaExhausted:
    return QuotaExhausted(_UNSTAMPED, message, until)


def gone(message: str = "task not found") -> Gone:
    return Gone(_UNSTAMPED, message)


SubmitStep: TypeAlias = SubmitOutcome | Callable[[Request], Awaitable[SubmitOutcome]]
CheckStep: TypeAlias = CheckOutcome | Callable[[str], Awaitable[CheckOutcome]]


@dataclass
class Script:
    submit: collections.deque[SubmitStep] = field(default_factory=collections.deque)
    check: collections.deque[CheckStep] = field(default_factory=collections.deque)


@dataclass(frozen=True)
class Sent:
    """A submit that left (its `before_send` returned): when, by the test's clock, and for which prompt."""

    prompt: str
    at: float


@dataclass(frozen=True)
class Rates:
    """Probabilities that a submit past its prompt's script answers so instead of being accepted: a draw each,
    in this order, from the fake's `rng` (seed it for a repeatable run)."""

    failed: float = 0.0  # Failed (GENERATION): not billed
    refused: float = 0.0  # Failed (BLOCKED): not billed
    unknown: float = 0.0  # Unknown: generated and billed, the reply lost (the case a runner must count)
    rate_limited: float = 0.0  # RateLimited: not accepted
    transient: float = 0.0  # Transient: not accepted


# how each outcome would have come over HTTP, for its call record: (outcome, status)
_WIRE: dict[type[Outcome], tuple[str, int | None]] = {
    Accepted: ("ok", 200),
    Running: ("ok", 200),
    Done: ("ok", 200),
    Unknown: ("ambiguous", None),
    Transient: ("transient", 503),
    RateLimited: ("rate_limited", 429),
    AuthRejected: ("auth", 401),
    QuotaExhausted: ("rate_limited", 429),
    Gone: ("not_found", 404),
}


class FakeProvider:
    """`Provider` in memory. `clock`: the test's (the runner's) wall clock, for call records and generation
    times; `latency_s`: how long each reply takes on the loop's clock; `generation_s`: how long an accepted
    submission runs before a check finds it done; `image_in_reply`: a submit past the script answers Done with
    the image's bytes (the Gemini online shape) rather than Accepted (LinkModel's queue); `rates` and `rng`:
    outcomes drawn at random past the script."""

    key_env = "FAKE_API_KEY"

    def __init__(
        self,
        name: str = "fake",
        *,
        clock: Callable[[], float] = time.time,
        rate: float | None = None,
        latency_s: float = 0.0,
        generation_s: float = 0.0,
        price_micros: int = PRICE,
        image_in_reply: bool = False,
        rates: Rates = Rates(),
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.gate = RateGate(rate)
        self.clock = clock
        self.latency_s = latency_s
        self.generation_s = generation_s
        self.price_micros = price_micros
        self.image_in_reply = image_in_reply
        self.rates = rates
        self.rng = rng or random.Random(0)
        self.api_key = KEY
        self.scripts: dict[str, Script] = collections.defaultdict(Script)
        # the fake's own accounting
        self.sent: list[Sent] = []  # every submit that left, in order
        self.accepted: dict[str, str] = {}  # handle → prompt, of every submit the API took
        self.billed: dict[str, int] = {}  # handle → price, of every generation that reached Done (once each)
        self.checks: collections.Counter[str] = collections.Counter()  # by prompt
        self.fetches = 0
        self._started: dict[str, float] = {}  # handle → when it was accepted (clock)
        self._files: dict[str, bytes] = {}  # URL → bytes
        self._ids = itertools.count(1)
        self.users = 0  # runs inside `async with` now

    # --- the test's side ----------------------------------------------------------------------------------

    def script(self, prompt: str, *, submit: Sequence[SubmitStep] = (), check: Sequence[CheckStep] = ()) -> None:
        """What the prompt's next submits and checks answer, after what was scripted before."""
        s = self.scripts[prompt]
        s.submit.extend(submit)
        s.check.extend(check)

    def submits(self, prompt: str | None = None) -> int:
        return sum(1 for s in self.sent if prompt is None or s.prompt == prompt)

    @property
    def billed_micros(self) -> int:
        return sum(self.billed.values())

    # --- the Protocol -----------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeProvider:
        self.users += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.users -= 1
        if not self.users:  # two runners of one test share the fake: the first to end must not stop the other's gate
            await self.gate.close()

    async def submit(self, request: Request, *, before_send: Callable[[], Awaitable[None]]) -> SubmitOutcome:
        await self.gate.acquire(priority=False)
        await before_send()  # may raise: the request is then not sent
        at = self.clock()
        self.sent.append(Sent(request.prompt, at))
        script = self.scripts[request.prompt].submit
        drawn = not script
        step: SubmitStep = script.popleft() if script else self._drawn()
        await self._latency()
        outcome = step if isinstance(step, Outcome) else await step(request)
        if drawn and isinstance(outcome, Unknown):  # a lost reply: generated and billed, its handle never seen
            lost = f"{self.name}-{next(self._ids)}"
            self.accepted[lost], self._started[lost] = request.prompt, at
            self.billed[lost] = self.price_micros
        if isinstance(outcome, Accepted):
            handle = outcome.handle or f"{self.name}-{next(self._ids)}"
            outcome = dataclasses.replace(outcome, handle=handle)
            self.accepted[handle] = request.prompt
            self._started[handle] = at
        elif isinstance(outcome, Done):
            handle = f"{self.name}-{next(self._ids)}"
            data = outcome.image.data if outcome.image.data is not None else _png(request.prompt)
            outcome = dataclasses.replace(outcome, image=Image(data=data, mime_type="image/png"), handle=handle)
            self.billed[handle] = self.price_micros
        return self._stamped(outcome, "create", at)

    async def check(self, handle: str) -> CheckOutcome:
        await self.gate.acquire(priority=True)
        at = self.clock()
        prompt = self.accepted[handle]  # a handle the fake never gave out is a bug in the runner
        self.checks[prompt] += 1
        await self._latency()
        outcome: CheckOutcome
        if at < self._started[handle] + self.generation_s:
            outcome = running()
        else:
            script = self.scripts[prompt].check
            step: CheckStep = script.popleft() if script else done()
            outcome = step if isinstance(step, Outcome) else await step(handle)
        if isinstance(outcome, Done):
            url = f"fake://{self.name}/{handle}.png"
            self._files[url] = outcome.image.data if outcome.image.data is not None else _png(prompt)
            outcome = dataclasses.replace(outcome, image=Image(url=url), handle=handle)
            self.billed.setdefault(handle, self.price_micros)  # a generation is billed once, however often seen
        return self._stamped(outcome, "query", at, handle)

    async def fetch(self, image: Image, sink: Sink) -> Fetched:
        if image.data is not None:  # the reply held it: no request
            sink.write(image.data)
            return Fetched(True, None)
        assert image.url is not None
        await self.gate.acquire(priority=True)
        at = self.clock()
        self.fetches += 1
        await self._latency()
        sink.write(self._files[image.url])
        return Fetched(True, CallRecord("download", "ok", 200, self.latency_s * 1000, at))

    # --- inside -----------------------------------------------------------------------------------------

    def _drawn(self) -> SubmitOutcome:
        """A submit past the script: drawn from `rates`, else accepted (or the image, `image_in_reply`)."""
        r = self.rates
        for rate, make in ((r.failed, lambda: failed(FailureKind.GENERATION)),
                           (r.refused, lambda: failed(FailureKind.BLOCKED)),
                           (r.unknown, unknown), (r.rate_limited, rate_limited), (r.transient, transient)):  # fmt: skip
            if rate and self.rng.random() < rate:
                return make()
        return done() if self.image_in_reply else accepted()

    async def _latency(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    def _stamped(self, outcome: OutcomeT, kind: str, at: float, handle: str | None = None) -> OutcomeT:
        """The outcome with the call record of its request, and the gate told of the reply (as linkmodel_api.py does)."""
        if isinstance(outcome, RateLimited):
            self.gate.rate_limited(outcome.wait_s)
        elif not isinstance(outcome, Unknown | Transient):
            self.gate.answered()
        wire, status = _WIRE.get(type(outcome), ("ok", 200))
        if isinstance(outcome, Failed) and outcome.kind is FailureKind.INVALID:
            wire, status = "permanent", 400
        if isinstance(outcome, Accepted):
            handle = outcome.handle
        message = getattr(outcome, "message", None) or getattr(outcome, "reason", None)
        call = CallRecord(kind, wire, status, self.latency_s * 1000, at, handle, detail=message)
        return dataclasses.replace(outcome, call=call)


def _png(prompt: str) -> bytes:
    return encode_png(prompt, 16, 16)


# the batch fake, from its own module (small modules): `from batcher.providers.fake import FakeBatchClient`
from batcher.providers.fake_batch import (  # noqa: E402
    BatchScript,
    CreateFault,
    FakeBatchClient,
    Fate,
)

__all__ = [
    "BatchScript",
    "CreateFault",
    "FakeBatchClient",
    "FakeProvider",
    "Fate",
    "Rates",
]
