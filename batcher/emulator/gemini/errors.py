"""Google's error body ``{"error": {code, message, status, details}}`` and its google.rpc detail messages."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from batcher.emulator.envelope import json_response
from batcher.emulator.gemini.facts import QUOTA_METRIC, SERVICE

TYPE_PREFIX = "type.googleapis.com/google.rpc."
RATE_LIMIT_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"
DEADLINE_MESSAGE = "Deadline expired before operation could complete."
# What Google's front end sends when it lost the backend's reply: HTML, not the API's JSON error.
GATEWAY_PAGE = (
    "<!DOCTYPE html><html lang=en><title>Error 502 (Server Error)!!1</title>"
    "<p><b>502.</b> <ins>That's an error.</ins><p>The server encountered a temporary error. <ins>That's all we know.</ins>\n"
)
# What a proxy between the client and Google answers: a bare status line, no JSON, no HTML.
BARE_GATEWAY_TEXT = {502: "502 Bad Gateway\n", 504: "upstream request timeout"}

# The canonical status name of each HTTP status this API answers with.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def api_error(code: int, message: str, *details: dict[str, Any], status: str | None = None) -> web.Response:
    """An error reply; `status` defaults to the canonical name of `code`."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status or STATUS_NAMES[code]}
    if details:
        error["details"] = list(details)
    return json_response({"error": error}, code)


def retry_info(seconds: int) -> dict[str, Any]:
    """google.rpc.RetryInfo: how long to wait, as a protobuf Duration string ("47s")."""
    return {"@type": TYPE_PREFIX + "RetryInfo", "retryDelay": f"{seconds}s"}


def quota_failure(quota_id: str, model: str, limit: int | None) -> dict[str, Any]:
    """google.rpc.QuotaFailure naming the quota that ran out, per project and model."""
    violation: dict[str, Any] = {
        "quotaMetric": QUOTA_METRIC,
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
    }
    if limit is not None:
        violation["quotaValue"] = str(limit)
    return {"@type": TYPE_PREFIX + "QuotaFailure", "violations": [violation]}


def error_info(reason: str) -> dict[str, Any]:
    """google.rpc.ErrorInfo with a machine-readable reason such as API_KEY_INVALID."""
    return {
        "@type": TYPE_PREFIX + "ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": SERVICE},
    }


def help_link() -> dict[str, Any]:
    link = {"description": "Learn more about Gemini API quotas", "url": RATE_LIMIT_DOCS}
    return {"@type": TYPE_PREFIX + "Help", "links": [link]}


def invalid_key() -> web.Response:
    """A wrong key is a 400 (not a 401) with ErrorInfo API_KEY_INVALID."""
    message = "API key not valid. Please pass a valid API key."
    return api_error(400, message, error_info("API_KEY_INVALID"))


def missing_key() -> web.Response:
    """No key at all: 403, the way Google answers unregistered callers."""
    message = (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."
    )
    return api_error(403, message, error_info("CONSUMER_INVALID"))


SPEND_CAP_MESSAGE = (
    "Your project has exceeded its spending cap. Raise the project's spend cap in Google AI Studio to continue."
)


def spend_cap_exceeded() -> web.Response:
    """The 429 RESOURCE_EXHAUSTED of a project whose spending cap is reached: no QuotaFailure, no RetryInfo (no
    wait brings it back: only a higher cap)."""
    return api_error(429, SPEND_CAP_MESSAGE, help_link())


def quota_exceeded(quota_id: str, model: str, limit: int | None, retry_s: int) -> web.Response:
    """A 429 RESOURCE_EXHAUSTED with QuotaFailure, Help and RetryInfo, as Google sends them."""
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        f"this error, head to: {RATE_LIMIT_DOCS}.\n* Quota exceeded for metric: {QUOTA_METRIC}, "
        f"limit: {limit if limit is not None else 'unknown'}, model: {model}\nPlease retry in {retry_s}s."
    )
    return api_error(429, message, quota_failure(quota_id, model, limit), help_link(), retry_info(retry_s))


def gateway_error(status: int, body: str) -> web.Response:
    """A gateway's 502/504: "google" is Google's front end (its HTML 502 page, its JSON 504 DEADLINE_EXCEEDED),
    "bare" a proxy's plain text. Neither says whether the request behind it was done."""
    if body == "bare":
        return web.Response(status=status, text=BARE_GATEWAY_TEXT[status], content_type="text/plain")
    if status == 502:
        return web.Response(status=502, text=GATEWAY_PAGE, content_type="text/html")
    return api_error(status, DEADLINE_MESSAGE)
