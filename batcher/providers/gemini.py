"""Gemini online (``models.generateContent``) as a Provider: REST over aiohttp, every reply one typed outcome.

Why not the google-genai SDK: the worker commits its intent in `before_send`, after the rate gate lets a
request go and just before its bytes leave, and the SDK has no hook between the two. And the SDK retries on
its own: generateContent has no idempotency key, so a retry after a lost reply is a second generation, billed
again. Here each submit is exactly one POST, and the worker decides what is tried again.

One call lasts the whole generation, and the image comes back in the reply (base64 in the JSON), so the window
in which an error leaves a submission unknown is the whole call. What each reply proves:

| reply                                                                 | outcome                 | billed   |
| --------------------------------------------------------------------- | ----------------------- | -------- |
| 200 with an inlineData image part                                     | Done                    | yes      |
| 200, a candidate with no image (finishReason IMAGE_SAFETY, ..., STOP) | Failed BLOCKED          | no       |
| 200, no candidate and promptFeedback.blockReason                      | Failed BLOCKED          | no       |
| 200, no image and another finishReason (MAX_TOKENS, ...)              | Failed GENERATION       | no       |
| 200 that is not a GenerateContentResponse (not JSON, over the cap,    | Unknown                 | maybe    |
|   an image that is not base64)                                        |                         |          |
| 400 with ErrorInfo API_KEY_INVALID; any 401 or 403                    | AuthRejected            | no       |
| 408                                                                   | Transient               | no       |
| any other 4xx but 429 (400 INVALID_ARGUMENT, FAILED_PRECONDITION,     | Failed INVALID          | no       |
|   404 NOT_FOUND)                                                      |                         |          |
| 429 whose QuotaFailure names a per-day quota (quotaId ...PerDay...)   | QuotaExhausted          | no       |
| 429 whose message names the project's spending cap (spend cap)       | SpendCapReached         | no       |
| any other 429                                                         | RateLimited             | no       |
| 500, 503, 504 carrying Google's JSON error body                       | Transient               | no       |
| any other 5xx, or a 500/503/504 whose body is not Google's (a         | Unknown                 | maybe    |
|   gateway's HTML page), any other status                              |                         |          |
| a refused connection (aiohttp.ClientConnectorError: never reached it) | Transient               | no       |
| a timeout, a reset or any error once the request may have left        | Unknown                 | maybe    |

Google documents 500/503/504 as transient errors of the service, and an error reply holds no image: with the
API's own error body they prove nothing was made. A body that is not the API's came from something in front
of it, which may have lost a reply the API sent.

The rate gate hears of every reply: `rate_limited(wait)` on a per-minute 429, `answered()` on everything else
but a per-day 429 (which stops creates until the quota day ends, Pacific midnight: pausing the whole pool or
cutting the rate would be wrong for it) and a refused connection (no reply at all).

Input images: `data:` URIs go as inlineData parts after the prompt, their base64 passed through unchanged.
http(s) URLs are refused before anything is sent (the request would need the Files API or a download first):
resolve them to `data:` URIs upstream. Such a refusal's call has kind `not_sent`, so the ledger never counts
it as a submission (nor is `check`'s, which sends nothing either).

The API key goes only in the ``x-goog-api-key`` header to the API's own origin: never into an outcome, a
record or a message (the API's own messages are scrubbed of it, in case one ever echoes it).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp

from batcher.catalog import GEMINI
from batcher.models import NOT_SENT, CallRecord
from batcher.providers.base import (
    AuthRejected,
    Done,
    Failed,
    FailureKind,
    Fetched,
    Gone,
    Image,
    QuotaExhausted,
    RateLimited,
    Request,
    Sink,
    SpendCapReached,
    SubmitOutcome,
    Transient,
    Unknown,
)
from batcher.providers.download import DownloadOutcome, describe, download, origin
from batcher.providers.gemini_settings import KEY_ENVS, GeminiSettings
from batcher.providers.gemini_wire import (
    DETAIL_CHARS,
    KEY_HEADER,
    TRANSIENT_5XX,
    Garbled,
    ImageReply,
    api_error,
    image_tokens,
    parse_json,
    quota_ids,
    read_capped,
    read_response,
    reasons,
    retry_delay,
)
from batcher.providers.http import SessionOwner
from batcher.ratelimit import RateGate
from batcher.retry import parse_retry_after

__all__ = ["GeminiProvider", "aspect_ratio", "image_tokens", "next_quota_day", "request_body"]

SPEND_CAP = re.compile(r"\bspend(ing)? cap\b", re.IGNORECASE)  # a 429 that names the project's spending cap
QUOTA_TZ = ZoneInfo("America/Los_Angeles")  # Gemini's per-day quotas reset at midnight Pacific
GONE_MESSAGE = "a Gemini online reply holds its image; once lost it cannot be fetched again"


class Unsendable(ValueError):
    """A request that cannot be put on the wire as asked; the message says why."""


class GeminiProvider(SessionOwner[GeminiSettings]):
    """One aiohttp session to the Gemini API; every request first passes the shared rate gate.

    `now` is the wall clock (epoch seconds): it times the ledger's records and finds the next quota day.
    """

    name = "gemini"
    key_env = " or ".join(KEY_ENVS)

    def __init__(
        self, settings: GeminiSettings, api_key: str, gate: RateGate, *, now: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.gate = gate
        self._now = now
        self._key = api_key
        self._auth = {KEY_HEADER: api_key}
        self._origin = origin(settings.base_url)
        self._base = f"{settings.base_url.rstrip('/')}/{settings.api_version}"

    def __repr__(self) -> str:  # never the key
        return f"GeminiProvider({self._base!r})"

    # --- submit -------------------------------------------------------------------------------------

    async def submit(self, request: Request, *, before_send: Callable[[], Awaitable[None]]) -> SubmitOutcome:
        """One generateContent call. The body is built before the gate, so the gate's slot and the intent
        committed in `before_send` are followed at once by the bytes leaving."""
        try:
            payload = json.dumps(request_body(request), separators=(",", ":")).encode()
        except Unsendable as e:
            call = CallRecord(NOT_SENT, "invalid", None, 0.0, self._now(), detail=str(e)[:DETAIL_CHARS])
            return Failed(call, reason=str(e), kind=FailureKind.INVALID)
        url = f"{self._base}/models/{quote(request.model, safe='')}:generateContent"
        await self.gate.acquire(priority=False)
        await before_send()  # may raise: nothing has been sent
        return await self._generate(url, payload)

    async def _generate(self, url: str, payload: bytes) -> SubmitOutcome:
        start, at = time.monotonic(), self._now()
        status: int | None = None

        def call(outcome: str, detail: str = "", remote_id: str | None = None) -> CallRecord:
            latency = (time.monotonic() - start) * 1000
            return CallRecord("create", outcome, status, latency, at, remote_id, detail=detail[:DETAIL_CHARS] or None)

        headers = {**self._auth, "Content-Type": "application/json"}
        try:
            async with self.session.post(url, data=payload, headers=headers) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now())
                raw = await read_capped(resp, self.settings.max_reply_bytes)
        except aiohttp.ClientConnectorError as e:  # never reached the server: nothing was sent
            msg = f"cannot connect to the Gemini API: {self._scrub(describe(e))}"
            return Transient(call("transient", msg), msg)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            self.gate.answered()
            msg = f"no reply from the Gemini API: {self._scrub(describe(e))}; the image may have been made and billed"
            return Unknown(call("ambiguous", msg), msg)
        if raw is None:
            self.gate.answered()
            msg = f"HTTP {status} reply larger than {self.settings.max_reply_bytes} bytes: not the API's reply"
            return Unknown(call("ambiguous", msg), msg)
        doc = parse_json(raw)
        del raw  # the base64 text lives on in `doc` until decoded; the raw body need not
        if status == 429:
            return self._rate_limited(doc, retry_after, call)
        self.gate.answered()
        if status == 200:
            if doc is None:
                msg = "HTTP 200 with a body that is not JSON: the image may have been made and billed"
                return Unknown(call("ambiguous", msg), msg)
            return self._generated(doc, call)
        return self._refused(status, api_error(doc), call)

    def _generated(self, doc: dict[str, Any], call: Callable[..., CallRecord]) -> SubmitOutcome:
        judged = read_response(doc)
        if isinstance(judged, ImageReply):
            tokens = image_tokens(judged.usage)
            detail = f"{tokens} image tokens" if tokens is not None else ""
            record = call("ok", detail, judged.response_id)
            return Done(record, image=judged.image, handle=judged.response_id, usage=judged.usage)
        if isinstance(judged, Garbled):
            msg = f"HTTP 200 with {judged.message}"
            return Unknown(call("ambiguous", msg, judged.response_id), msg)
        record = call(judged.outcome, judged.reason, judged.response_id)
        return Failed(record, reason=judged.reason, kind=judged.kind)

    def _rate_limited(
        self, doc: dict[str, Any] | None, retry_after: float | None, call: Callable[..., CallRecord]
    ) -> SubmitOutcome:
        error = api_error(doc)
        quotas = [q for q in quota_ids(error) if q]
        message = self._scrub(str(error.get("message") or "")) if error else ""
        first_line = message.splitlines()[0] if message else "HTTP 429"
        if SPEND_CAP.search(message) and not quotas:  # Google's project spend caps: no wait brings them back
            return SpendCapReached(call("spend_cap", first_line), first_line)
        if any("PerDay" in q for q in quotas):
            until = next_quota_day(self._now())
            msg = ", ".join(quotas)  # QuotaError.spent says what it is and when it resets, once
            return QuotaExhausted(call("quota_exhausted", msg), msg, until=until)
        wait = retry_delay(error)
        wait = wait if wait is not None else retry_after
        self.gate.rate_limited(wait)
        named = f" ({', '.join(quotas)})" if quotas else ""
        msg = f"rate limited{named}: {first_line}"
        return RateLimited(call("rate_limited", msg), msg, wait_s=wait)

    def _refused(
        self, status: int | None, error: dict[str, Any] | None, call: Callable[..., CallRecord]
    ) -> SubmitOutcome:
        code = status or 0
        api_status = str(error.get("status") or "") if error else ""
        message = self._scrub(str(error.get("message") or "")) if error else ""
        what = f"HTTP {code}" + (f" {api_status}" if api_status else "") + (f": {message}" if message else "")
        if code in (401, 403) or (code == 400 and "API_KEY_INVALID" in reasons(error)):
            msg = what  # AuthError.rejected says what to check, once
            return AuthRejected(call("auth", msg), msg)
        if code == 408:
            return Transient(call("transient", what), what)
        if 400 <= code < 500:
            return Failed(call("invalid", what), reason=what, kind=FailureKind.INVALID)
        if code in TRANSIENT_5XX and error is not None:
            msg = f"{what} (the API's own error: nothing was made)"
            return Transient(call("transient", msg), msg)
        shape = "the API's error body" if error is not None else "a body that is not the API's"
        msg = f"HTTP {code} with {shape}: the image may have been made and billed"
        return Unknown(call("ambiguous", msg), msg)

    # --- check and fetch ----------------------------------------------------------------------------

    async def check(self, handle: str) -> Gone:
        """Online there is no remote task to poll: the reply held the image, or it is gone."""
        call = CallRecord(NOT_SENT, "gone", None, 0.0, self._now(), handle, detail=GONE_MESSAGE)
        return Gone(call, GONE_MESSAGE)

    async def fetch(self, image: Image, sink: Sink) -> Fetched:
        """Bytes the reply held go straight to the sink; a URL is streamed (the key only to the API's origin).

        A download that failed for a while (an expired URL, a 5xx, a reset) is `retryable`: checking again is
        the only way the vocabulary has to try again. One refused for good (not an image) is not."""
        if image.data is not None:
            sink.write(image.data)
            return Fetched(ok=True, call=None)
        if image.url is None:
            return Fetched(ok=False, call=None, message="the image has neither bytes nor a URL")
        headers = self._auth if origin(image.url) == self._origin else {}
        got = await download(self.session, image.url, sink, max_bytes=self.settings.max_image_bytes, headers=headers)
        if got.outcome is DownloadOutcome.OK:
            return Fetched(ok=True, call=got.call)
        expired = got.outcome is DownloadOutcome.TRANSIENT
        return Fetched(ok=False, call=got.call, message=got.message, retryable=expired)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text


# --- the request ------------------------------------------------------------------------------------


def request_body(request: Request) -> dict[str, Any]:
    """The GenerateContentRequest of a task: the prompt, then each input image as an inlineData part."""
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    parts += [_image_part(i, uri) for i, uri in enumerate(request.images)]
    image_config: dict[str, Any] = {"aspectRatio": aspect_ratio(request.size)}
    if request.quality:
        image_config["imageSize"] = request.quality
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": image_config},
    }


def aspect_ratio(size: str) -> str:
    """The catalog's `16x9` as Gemini's `16:9`."""
    canonical = GEMINI.to_canonical(size)
    if canonical is None:
        raise Unsendable(f"size {size!r} is not an aspect ratio the Gemini API serves")
    return GEMINI.to_wire(canonical)


def _image_part(index: int, uri: str) -> dict[str, Any]:
    lowered = uri[:8].lower()
    if lowered.startswith(("http://", "https://")):
        raise Unsendable(f"input image {index + 1} is a URL: the Gemini provider sends images inline, as data: URIs")
    if not lowered.startswith("data:"):
        raise Unsendable(f"input image {index + 1} is neither a data: URI nor a URL")
    header, comma, data = uri[5:].partition(",")
    fields = [f.strip().lower() for f in header.split(";")]
    mime = fields[0]
    if not comma or "base64" not in fields[1:] or not mime.startswith("image/") or not data:
        raise Unsendable(f"input image {index + 1} must be a base64 data: URI of an image (data:image/...;base64,)")
    return {"inlineData": {"mimeType": mime, "data": data}}


# --- the quota day --------------------------------------------------------------------------------


def next_quota_day(now: float) -> float:
    """Epoch seconds of the next midnight in America/Los_Angeles after `now`, when per-day quotas reset."""
    today = dt.datetime.fromtimestamp(now, QUOTA_TZ).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), tzinfo=QUOTA_TZ)
    return midnight.timestamp()
