"""Gemini online (``models.generateContent``) as a Provider: REST over aiohttp, every reply one typed outcome.

The call itself, shared with Vertex AI, is google_online.py's; this module says Gemini's URL, key and 429s.

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
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from batcher.providers.auth import ApiKey
from batcher.providers.base import QuotaExhausted, RateLimited, SpendCapReached, SubmitOutcome
from batcher.providers.gemini_settings import KEY_ENVS, GeminiSettings
from batcher.providers.google_online import Call, GoogleOnline
from batcher.providers.google_wire import (
    KEY_HEADER,
    Unsendable,
    api_error,
    aspect_ratio,
    image_tokens,
    quota_ids,
    request_body,
    retry_delay,
)
from batcher.ratelimit import RateGate

__all__ = ["GeminiProvider", "Unsendable", "aspect_ratio", "image_tokens", "next_quota_day", "request_body"]

SPEND_CAP = re.compile(r"\bspend(ing)? cap\b", re.IGNORECASE)  # a 429 that names the project's spending cap
QUOTA_TZ = ZoneInfo("America/Los_Angeles")  # Gemini's per-day quotas reset at midnight Pacific
KEY_HINT = " or ".join(KEY_ENVS)


def gemini_key(api_key: str) -> ApiKey:
    """The Gemini API's credential: the key in x-goog-api-key."""
    return ApiKey(KEY_HEADER, api_key, KEY_HINT)


class GeminiProvider(GoogleOnline[GeminiSettings]):
    """The Gemini API online: one aiohttp session; every request first passes the shared rate gate.

    `now` is the wall clock (epoch seconds): it times the ledger's records and finds the next quota day.
    """

    name = "gemini"
    label = "the Gemini API"

    def __init__(
        self, settings: GeminiSettings, api_key: str, gate: RateGate, *, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(settings, gemini_key(api_key), gate, now=now)
        self._base = f"{settings.base_url.rstrip('/')}/{settings.api_version}"

    def __repr__(self) -> str:  # never the key
        return f"GeminiProvider({self._base!r})"

    def _url(self, model: str) -> str:
        return f"{self._base}/models/{quote(model, safe='')}:generateContent"

    def _rate_limited(self, doc: dict[str, Any] | None, retry_after: float | None, call: Call) -> SubmitOutcome:
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


# --- the quota day --------------------------------------------------------------------------------


def next_quota_day(now: float) -> float:
    """Epoch seconds of the next midnight in America/Los_Angeles after `now`, when per-day quotas reset."""
    today = dt.datetime.fromtimestamp(now, QUOTA_TZ).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), tzinfo=QUOTA_TZ)
    return midnight.timestamp()
