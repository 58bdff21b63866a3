"""The LinkModel API over aiohttp: create, query, download, each turned into a typed outcome.

Accepts both shapes the contract lists (`msg`/`message`, `file_url`/`output_images`, `Pending`, `Cancelled`,
a non-zero `code` under HTTP 200). The API key goes only to the API's own origin (never to a file host) and
never into an outcome, a record or an error message.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

import aiohttp

from batcher.config import ApiSettings
from batcher.models import CallRecord
from batcher.money import parse_usd, usd_to_micros
from batcher.providers.download import describe as _describe
from batcher.providers.download import download
from batcher.providers.download import origin as _origin
from batcher.providers.http import SessionOwner
from batcher.ratelimit import RateGate
from batcher.retry import parse_retry_after

MAX_REPLY_BYTES = 1 << 20  # an API envelope larger than this is malformed
DETAIL_CHARS = 300  # of an error message kept in the ledger


class Outcome(enum.StrEnum):
    OK = "ok"
    TRANSIENT = "transient"  # not done; safe to try again (a create: proven not created)
    RATE_LIMITED = "rate_limited"  # 429: not done; the whole pool waits
    PERMANENT = "permanent"  # 400 and the like: trying again cannot help
    AUTH = "auth"  # 401/403: stop the run
    NOT_FOUND = "not_found"  # 404 on a task id
    AMBIGUOUS = "ambiguous"  # a create that may or may not have been accepted


class Generation(enum.StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Reply:
    outcome: Outcome
    call: CallRecord
    message: str = ""
    data: dict[str, Any] | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class CreateReply(Reply):
    remote_id: str | None = None
    price_micros: int | None = None


@dataclass(frozen=True)
class QueryReply(Reply):
    generation: Generation | None = None
    urls: tuple[str, ...] = ()


class Sink(Protocol):
    """Where a download's bytes go (outputs.AtomicFile is one)."""

    def write(self, chunk: bytes) -> None: ...


class ApiClient(SessionOwner[ApiSettings]):
    """One aiohttp session with a bounded pool; every API request first passes the shared rate gate."""

    def __init__(self, settings: ApiSettings, api_key: str, gate: RateGate) -> None:
        self.settings = settings
        self.gate = gate
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._origin = _origin(settings.base_url)
        self._base = settings.base_url.rstrip("/")

    # --- create -------------------------------------------------------------------------------------

    async def create(
        self,
        model: str,
        prompt: str,
        quality: str,
        size: str,
        images: tuple[str, ...] = (),
        *,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> CreateReply:
        """POST a generation. `before_send` runs after the rate gate and just before the request leaves (the
        worker commits its intent there, so the unknown window is as small as the store allows)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "quality": quality, "size": size}
        if images:
            body[self.settings.images_field] = list(images)
        await self.gate.acquire(priority=False)
        if before_send is not None:
            await before_send()
        reply = await self._call("create", "POST", f"{self._base}/image-generation", json_body=body)
        if reply.outcome is not Outcome.OK or reply.data is None:
            return CreateReply(reply.outcome, reply.call, reply.message, reply.data, reply.retry_after_s)
        remote_id = reply.data.get("task_id")
        if not isinstance(remote_id, str | int) or not str(remote_id):
            # a 200 without a usable id: the service may have created it all the same
            return CreateReply(
                Outcome.AMBIGUOUS,
                _with(reply.call, outcome=Outcome.AMBIGUOUS, detail="create reply has no task_id"),
                "create reply has no task_id",
            )
        price = _micros(reply.data.get("price"))
        call = _with(reply.call, remote_task_id=str(remote_id), price_micros=price)
        return CreateReply(Outcome.OK, call, "", reply.data, None, str(remote_id), price)

    # --- query --------------------------------------------------------------------------------------

    async def query(self, remote_id: str) -> QueryReply:
        await self.gate.acquire(priority=True)
        reply = await self._call(
            "query", "GET", f"{self._base}/query/image-generation", params={"task_id": remote_id}, remote_id=remote_id
        )
        if reply.outcome is not Outcome.OK or reply.data is None:
            outcome = Outcome.TRANSIENT if reply.outcome is Outcome.AMBIGUOUS else reply.outcome
            return QueryReply(
                outcome, _with(reply.call, outcome=outcome), reply.message, reply.data, reply.retry_after_s
            )
        data = reply.data
        status = str(data.get("status", "")).strip().lower()
        if status in ("processing", "pending", "queued", "running"):
            return QueryReply(Outcome.OK, reply.call, "", data, None, Generation.RUNNING)
        if status in ("success", "succeeded", "completed"):
            urls = _urls(data)
            if not urls:
                msg = "generation succeeded but the reply names no file"
                return QueryReply(Outcome.TRANSIENT, _with(reply.call, outcome=Outcome.TRANSIENT, detail=msg), msg)
            return QueryReply(Outcome.OK, reply.call, "", data, None, Generation.SUCCESS, urls)
        if status in ("failed", "cancelled", "canceled"):
            reason = str(data.get("msg") or data.get("message") or data.get("error") or status)[:DETAIL_CHARS]
            gen = Generation.FAILED if status == "failed" else Generation.CANCELLED
            return QueryReply(Outcome.OK, _with(reply.call, detail=reason), reason, data, None, gen)
        msg = f"unknown task status {status!r}"
        return QueryReply(Outcome.TRANSIENT, _with(reply.call, outcome=Outcome.TRANSIENT, detail=msg), msg)

    # --- download -----------------------------------------------------------------------------------

    async def download(self, url: str, sink: Sink) -> Reply:
        """Stream `url` into `sink`, refusing non-HTTP schemes and anything larger than an image can be."""
        # the key is for the API only: a file host (a CDN in the field) never sees it
        headers = self._auth if _origin(url) == self._origin else {}
        got = await download(self.session, url, sink, max_bytes=self.settings.max_image_bytes, headers=headers)
        outcome = Outcome(got.outcome)
        return Reply(outcome, _with(got.call, outcome=outcome), got.message)

    # --- the envelope -------------------------------------------------------------------------------

    async def _call(
        self,
        kind: str,
        method: str,
        url: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        remote_id: str | None = None,
    ) -> Reply:
        start, at = time.monotonic(), time.time()
        status: int | None = None

        def done(
            outcome: Outcome, message: str = "", data: dict[str, Any] | None = None, retry_after: float | None = None
        ) -> Reply:
            if outcome is Outcome.RATE_LIMITED:
                self.gate.rate_limited(retry_after)
            elif outcome is not Outcome.TRANSIENT or status is not None:
                self.gate.answered()
            call = CallRecord(
                kind,
                outcome,
                status,
                (time.monotonic() - start) * 1000,
                at,
                remote_id,
                detail=message[:DETAIL_CHARS] or None,
            )
            return Reply(outcome, call, message, data, retry_after)

        try:
            async with self.session.request(method, url, json=json_body, params=params, headers=self._auth) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                raw = await resp.content.read(MAX_REPLY_BYTES + 1)
        except aiohttp.ClientConnectorError as e:  # never reached the server: nothing was created
            return done(Outcome.TRANSIENT, f"cannot connect: {_describe(e)}")
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            # the request may have been received: a create is ambiguous, a query merely failed
            outcome = Outcome.AMBIGUOUS if kind == "create" else Outcome.TRANSIENT
            return done(outcome, f"no reply: {_describe(e)}")
        envelope = _envelope(raw)
        if envelope is None:
            if kind == "create":
                outcome = classify_create(status, None)
                what = "HTTP 429" if outcome is Outcome.RATE_LIMITED else f"HTTP {status}"
                if outcome is Outcome.AMBIGUOUS:
                    what += " with a body that is not an API envelope: the create may have been accepted"
                return done(outcome, what, None, retry_after)
            if status == 429:
                return done(Outcome.RATE_LIMITED, "HTTP 429", None, retry_after)
            if status >= 500 or status in (408, 425):
                return done(Outcome.TRANSIENT, f"HTTP {status} with a body that is not an API envelope")
            if status in (401, 403):
                return done(Outcome.AUTH, f"HTTP {status}")
            return done(
                Outcome.TRANSIENT if status == 200 else Outcome.PERMANENT,
                f"HTTP {status} with a body that is not an API envelope",
            )
        code, message, data = envelope
        if code == 0 and status < 300:
            return done(Outcome.OK, "", data)
        effective = code if code not in (0, None) else status
        message = message or f"HTTP {status}"
        outcome = classify_create(status, effective) if kind == "create" else _classify(effective)
        if outcome is Outcome.AMBIGUOUS:
            message += "; the create may have been accepted"
        return done(outcome, f"{message} (code {effective})", data, retry_after)


def classify_create(status: int, code: int | None) -> Outcome:
    """What a reply to a create proves. Only the answers the contract gives for a refused request prove that
    nothing was created: a gateway's 502/504, a 500, a timeout or a body that is not the API's may all come
    after the API accepted (and billed) it, so those are ambiguous (docs/providers/linkmodel.md lists them all)."""
    effective = code if code is not None else status
    if effective == 429 or status == 429:
        return Outcome.RATE_LIMITED
    if effective in (401, 403) or (code is None and status in (401, 403)):
        return Outcome.AUTH
    if effective == 400:
        return Outcome.PERMANENT
    return Outcome.AMBIGUOUS


def _classify(code: int) -> Outcome:
    if code == 429:
        return Outcome.RATE_LIMITED
    if code in (401, 403):
        return Outcome.AUTH
    if code == 404:
        return Outcome.NOT_FOUND
    if code in (408, 425) or code >= 500:
        return Outcome.TRANSIENT
    if 400 <= code < 500:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def _envelope(raw: bytes) -> tuple[int, str, dict[str, Any]] | None:
    """(code, message, data) of a LinkModel envelope; None when the body is not one."""
    if len(raw) > MAX_REPLY_BYTES:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or "code" not in doc:
        return None
    try:
        code = int(doc["code"])
    except (TypeError, ValueError):
        return None
    message = doc.get("msg") or doc.get("message") or ""
    data = doc.get("data")
    return code, str(message)[:DETAIL_CHARS], data if isinstance(data, dict) else {}


def _urls(data: dict[str, Any]) -> tuple[str, ...]:
    url = data.get("file_url")
    if isinstance(url, str) and url:
        return (url,)
    images = data.get("output_images")
    if isinstance(images, list):
        return tuple(u for u in images if isinstance(u, str) and u)
    return ()


def _micros(price: Any) -> int | None:
    """The create's `data.price`, if it is a non-negative amount; anything else is no price."""
    if not isinstance(price, str | int | float | Decimal):
        return None
    try:
        value = parse_usd(price)
    except ValueError:
        return None
    return usd_to_micros(value) if value >= 0 else None


def _with(call: CallRecord, **changes: Any) -> CallRecord:
    return replace(call, **changes)
