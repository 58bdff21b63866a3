"""generateContent over REST, as the Gemini API and Vertex AI both serve it: one POST per image, every reply one
typed outcome. The APIs differ only in their URL, their credential and what their 429s mean: a subclass says
those (`_url`, `_rate_limited`, `_refused`), this class does the rest.

Why not the google-genai SDK: the worker commits its intent in `before_send`, after the rate gate lets a request
go and just before its bytes leave, and the SDK has no hook between the two. And the SDK retries on its own:
generateContent has no idempotency key, so a retry after a lost reply is a second generation, billed again. Here
each submit is one POST (two only after a 401, which proves nothing was created), and the worker decides what is
tried again. What each reply proves is tabled in gemini.py and vertex.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from batcher.models import NOT_SENT, CallRecord
from batcher.providers.auth import CredentialRefused, CredentialUnavailable
from batcher.providers.base import (
    AuthRejected,
    Done,
    Failed,
    FailureKind,
    Fetched,
    Gone,
    Image,
    Request,
    Sink,
    SubmitOutcome,
    Transient,
    Unknown,
)
from batcher.providers.download import DownloadOutcome, describe, download, origin
from batcher.providers.google_calls import GoogleSession, S
from batcher.providers.google_wire import (
    DETAIL_CHARS,
    TRANSIENT_5XX,
    Garbled,
    ImageReply,
    Unsendable,
    api_error,
    image_tokens,
    parse_reply,
    read_capped,
    read_response,
    reasons,
    request_body,
)
from batcher.retry import parse_retry_after

GONE_MESSAGE = "an online reply holds its image; once lost it cannot be fetched again"
Call = Callable[..., CallRecord]


class GoogleOnline(GoogleSession[S]):
    """generateContent, one POST per image; a subclass says the URL (`_url`) and what its 429s mean."""

    def _url(self, model: str) -> str:
        raise NotImplementedError

    def _origin(self) -> tuple[str, str]:
        return origin(self._url("m"))

    # --- submit -------------------------------------------------------------------------------------

    async def submit(self, request: Request, *, before_send: Callable[[], Awaitable[None]]) -> SubmitOutcome:
        """One generateContent call. The body is built before the gate, so the gate's slot and the intent
        committed in `before_send` are followed at once by the bytes leaving."""
        try:
            payload = json.dumps(request_body(request), separators=(",", ":")).encode()
        except Unsendable as e:
            call = CallRecord(NOT_SENT, "invalid", None, 0.0, self._now(), detail=str(e)[:DETAIL_CHARS])
            return Failed(call, reason=str(e), kind=FailureKind.INVALID)
        url = self._url(request.model)
        try:  # a token due for renewal is fetched now, before the intent is committed
            await self.credential.headers()
        except CredentialUnavailable as e:
            call = CallRecord(NOT_SENT, "transient", None, 0.0, self._now(), detail=str(e)[:DETAIL_CHARS])
            return Transient(call, str(e))
        except CredentialRefused as e:
            call = CallRecord(NOT_SENT, "auth", None, 0.0, self._now(), detail=str(e)[:DETAIL_CHARS])
            return AuthRejected(call, str(e))
        await self.gate.acquire(priority=False)
        await before_send()  # may raise: nothing has been sent
        return await self._generate(url, payload)

    async def _generate(self, url: str, payload: bytes) -> SubmitOutcome:
        start, at = time.monotonic(), self._now()
        status: int | None = None

        def call(outcome: str, detail: str = "", remote_id: str | None = None) -> CallRecord:
            latency = (time.monotonic() - start) * 1000
            return CallRecord("create", outcome, status, latency, at, remote_id, detail=detail[:DETAIL_CHARS] or None)

        try:
            for attempt in (1, 2):  # a second only after a 401 and a renewed credential
                auth = await self.credential.headers()
                headers = {**auth, "Content-Type": "application/json"}
                async with self.session.post(url, data=payload, headers=headers) as resp:
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now())
                    raw = await read_capped(resp, self.settings.max_reply_bytes)
                if status != 401 or attempt == 2 or not await self.credential.renew(auth):
                    break
        except (CredentialUnavailable, CredentialRefused) as e:  # renewing after a 401, which proved nothing was made
            msg = f"HTTP 401, and no fresh credential: {e}"
            if isinstance(e, CredentialUnavailable):
                return Transient(call("transient", msg), msg)
            return AuthRejected(call("auth", msg), msg)
        except aiohttp.ClientConnectorError as e:  # never reached the server: nothing was sent
            msg = f"cannot connect to {self.label}: {self._scrub(describe(e))}"
            return Transient(call("transient", msg), msg)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            self.gate.answered()
            msg = f"no reply from {self.label}: {self._scrub(describe(e))}; the image may have been made and billed"
            return Unknown(call("ambiguous", msg), msg)
        if raw is None:
            self.gate.answered()
            msg = f"HTTP {status} reply larger than {self.settings.max_reply_bytes} bytes: not the API's reply"
            return Unknown(call("ambiguous", msg), msg)
        doc = parse_reply(raw)
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

    def _generated(self, doc: dict[str, Any], call: Call) -> SubmitOutcome:
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

    def _rate_limited(self, doc: dict[str, Any] | None, retry_after: float | None, call: Call) -> SubmitOutcome:
        raise NotImplementedError

    def _refused(self, status: int | None, error: dict[str, Any] | None, call: Call) -> SubmitOutcome:
        code = status or 0
        what = self._what(status, error)
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
        """Bytes the reply held go straight to the sink; a URL is streamed (the credential only to the API's
        origin).

        A download that failed for a while (an expired URL, a 5xx, a reset) is `retryable`: checking again is
        the only way the vocabulary has to try again. One refused for good (not an image) is not."""
        if image.data is not None:
            sink.write(image.data)
            return Fetched(ok=True, call=None)
        if image.url is None:
            return Fetched(ok=False, call=None, message="the image has neither bytes nor a URL")
        headers = await self.credential.headers() if origin(image.url) == self._origin() else {}
        got = await download(self.session, image.url, sink, max_bytes=self.settings.max_image_bytes, headers=headers)
        if got.outcome is DownloadOutcome.OK:
            return Fetched(ok=True, call=got.call)
        expired = got.outcome is DownloadOutcome.TRANSIENT
        return Fetched(ok=False, call=got.call, message=got.message, retryable=expired)
