"""Replies that are not replies: closing a connection on purpose, and reading a JSON body."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class NoReply(web.Response):
    """Returned after the connection was closed on purpose; aiohttp's write of it fails quietly."""


def close_connection(request: web.Request) -> NoReply:
    """Abort the connection: the client sees it reset, with no HTTP reply."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return NoReply()


class BodyError(ValueError):
    """The body is not a JSON object, or is too large."""


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body; raises BodyError."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyError(f"Request payload size exceeds the limit: {max_bytes} bytes.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(f"Request payload size exceeds the limit: {max_bytes} bytes.") from None
    if len(raw) > max_bytes:
        raise BodyError(f"Request payload size exceeds the limit: {max_bytes} bytes.")
    try:
        return json.loads(raw)
    except ValueError:
        raise BodyError("Invalid JSON payload received.") from None
