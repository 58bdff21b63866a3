"""The response envelope ``{code, data, msg, request_id}`` in both the guide's and the field's spelling."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

JSON_TYPE = "application/json"
# What a malformed reply looks like: JSON cut off mid-object, still labelled as JSON.
MALFORMED_BODY = b'{"code": 0, "data": {"task_id": "'

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def envelope(code: int, data: Any, msg: str, request_id: str, field_variant: bool) -> dict[str, Any]:
    """The documented envelope; the field variant names the message `message`."""
    return {"code": code, "data": data, "message" if field_variant else "msg": msg, "request_id": request_id}


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON reply, encoded once without aiohttp's per-call dumps wrapper."""
    return web.Response(body=_dumps(payload).encode("utf-8"), status=status, content_type=JSON_TYPE, headers=headers)
