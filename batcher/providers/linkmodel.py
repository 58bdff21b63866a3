"""LinkModel behind the provider boundary: create → `Accepted(task_id)`, query → `Running`/`Done(file_url)`,
download → the file. The HTTP and every reply's classification stay in `linkmodel_api.py`, unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from batcher.config import API_KEY_ENV, ApiSettings
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
    RateLimited,
    Request,
    Running,
    Sink,
    SubmitOutcome,
    Transient,
    Unknown,
)
from batcher.providers.linkmodel_api import ApiClient, Generation, Outcome, Reply
from batcher.ratelimit import RateGate


class LinkModelProvider:
    name = "linkmodel"
    key_env = API_KEY_ENV

    def __init__(self, settings: ApiSettings, api_key: str, gate: RateGate) -> None:
        self.client = ApiClient(settings, api_key, gate)
        self.gate = gate

    async def __aenter__(self) -> LinkModelProvider:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def submit(self, request: Request, *, before_send: Callable[[], Awaitable[None]]) -> SubmitOutcome:
        r = await self.client.create(request.model, request.prompt, request.quality, request.size, request.images,
                                     before_send=before_send)  # fmt: skip
        if r.outcome is Outcome.OK and r.remote_id is not None:
            return Accepted(r.call, r.remote_id, r.price_micros)
        if r.outcome is Outcome.AMBIGUOUS:
            return Unknown(r.call, r.message)
        if r.outcome in (Outcome.PERMANENT, Outcome.NOT_FOUND):
            return Failed(r.call, f"rejected by the API: {r.message}", FailureKind.INVALID)
        return _common(r) or Transient(r.call, r.message)

    async def check(self, handle: str) -> CheckOutcome:
        r = await self.client.query(handle)
        if r.outcome is Outcome.OK:
            if r.generation is Generation.RUNNING:
                return Running(r.call)
            if r.generation is Generation.SUCCESS:
                return Done(r.call, Image(url=r.urls[0]), handle)
            what = "cancelled" if r.generation is Generation.CANCELLED else "failed"
            return Failed(r.call, f"generation {what}: {r.message}", FailureKind.GENERATION)
        if r.outcome in (Outcome.NOT_FOUND, Outcome.PERMANENT):
            return Gone(r.call, r.message)
        return _common(r) or Transient(r.call, r.message)

    async def fetch(self, image: Image, sink: Sink) -> Fetched:
        assert image.url is not None, "LinkModel's results are files to download"
        r = await self.client.download(image.url, sink)
        return Fetched(r.outcome is Outcome.OK, r.call, r.message, retryable=r.outcome is Outcome.TRANSIENT)


def _common(r: Reply) -> RateLimited | AuthRejected | None:
    if r.outcome is Outcome.RATE_LIMITED:
        return RateLimited(r.call, r.message, r.retry_after_s)
    if r.outcome is Outcome.AUTH:
        return AuthRejected(r.call, r.message)
    return None
