"""Vertex AI's error replies: Google's error body, with the messages and ErrorInfo reasons Vertex sends."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from batcher.emulator.envelope import json_response
from batcher.emulator.gemini.errors import TYPE_PREFIX

SERVICE = "aiplatform.googleapis.com"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
DSQ_MESSAGE = (
    "Resource exhausted, please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def error_info(reason: str, **metadata: str) -> dict[str, Any]:
    return {
        "@type": TYPE_PREFIX + "ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": SERVICE, **metadata},
    }


def vertex_error(
    code: int, message: str, *details: dict[str, Any], status: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status or _STATUS[code]}
    if details:
        error["details"] = list(details)
    return json_response({"error": error}, code, headers)


def unauthenticated(reason: str) -> web.Response:
    """401: no token (CREDENTIALS_MISSING), an expired one (ACCESS_TOKEN_EXPIRED) or one never issued."""
    return vertex_error(
        401,
        UNAUTHENTICATED_MESSAGE,
        error_info(reason),
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def permission_denied(permission: str, resource: str) -> web.Response:
    message = (
        f"Permission '{permission}' denied on resource '//aiplatform.googleapis.com/{resource}' (or it may not exist)."
    )
    return vertex_error(403, message, error_info("IAM_PERMISSION_DENIED", permission=permission, resource=resource))


def invalid_key() -> web.Response:
    return vertex_error(400, "API key not valid. Please pass a valid API key.", error_info("API_KEY_INVALID"))


def dsq_exhausted() -> web.Response:
    """Dynamic Shared Quota: no QuotaFailure, no RetryInfo, no Retry-After."""
    return vertex_error(429, DSQ_MESSAGE)


def model_not_found(resource: str) -> web.Response:
    return vertex_error(
        404,
        f"Publisher Model `{resource}` was not found or your project does not have access to it. Please ensure you "
        "are using a valid model version. For more information, see: "
        "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions",
    )


def location_not_found(location: str) -> web.Response:
    return vertex_error(404, f"Location {location} is not found or is not supported.")
