"""Validation of a create request's JSON body against the model facts. Pure: body in, request or error out."""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batcher.emulator.facts import DEFAULT_QUALITY, DEFAULT_SIZE, MODELS

MAX_INPUT_IMAGES = 10
DATA_URI_PREFIX = "data:image/"
BASE64_MARKER = ";base64,"
# Leading bytes of the image formats an edit may carry.
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class InvalidRequest(ValueError):
    """The request is invalid; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A validated create request."""

    model: str
    prompt: str
    quality: str
    size: str
    width: int
    height: int
    images: tuple[str, ...] = ()


def parse_create(body: Any, images_field: str, max_image_bytes: int) -> CreateRequest:
    """Check a decoded JSON body; raises InvalidRequest naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required: a model id string")
    facts = MODELS.get(model)
    if facts is None:
        raise InvalidRequest(f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("prompt is required: a non-empty string")
    quality = body.get("quality", DEFAULT_QUALITY)
    if not isinstance(quality, str) or quality not in facts.tiers:
        raise InvalidRequest(f"quality {quality!r} is not offered by {model}; use one of {', '.join(facts.tiers)}")
    size = body.get("size", DEFAULT_SIZE)
    if not isinstance(size, str) or size not in facts.sizes_at_1k:
        raise InvalidRequest(
            f"size {size!r} is not an aspect ratio of {model}; use one of {', '.join(facts.sizes_at_1k)}"
        )
    images: tuple[str, ...] = ()
    if images_field in body:
        images = _check_images(body[images_field], images_field, max_image_bytes)
    width, height = facts.pixel_size(quality, size)
    return CreateRequest(model, prompt, quality, size, width, height, images)


def _check_images(value: Any, field: str, max_image_bytes: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_INPUT_IMAGES:
        raise InvalidRequest(f"{field} must be a list of 1 to {MAX_INPUT_IMAGES} image URLs or data: URIs")
    for index, item in enumerate(value):
        problem = _image_problem(item, max_image_bytes)
        if problem:
            raise InvalidRequest(f"{field}[{index}]: {problem}")
    return tuple(value)


def _image_problem(item: Any, max_image_bytes: int) -> str | None:
    """What is wrong with one input image reference, or None."""
    if not isinstance(item, str) or not item:
        return "must be a non-empty string"
    if item.startswith("data:"):
        return _data_uri_problem(item, max_image_bytes)
    parts = urlsplit(item)
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not allowed; use http(s) or a data:image/ URI"
    if not parts.hostname:
        return "the URL has no host"
    return None


def _data_uri_problem(uri: str, max_image_bytes: int) -> str | None:
    head, marker, payload = uri.partition(BASE64_MARKER)
    if not head.startswith(DATA_URI_PREFIX) or not marker:
        return "a data: URI must look like data:image/<type>;base64,<data>"
    # Reject before decoding: base64 is 4 characters per 3 bytes.
    if len(payload) > (max_image_bytes + 2) // 3 * 4 + 4:
        return f"the image is larger than {max_image_bytes} bytes"
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        return f"the base64 data does not decode ({exc})"
    if not data:
        return "the image is empty"
    if len(data) > max_image_bytes:
        return f"the image is larger than {max_image_bytes} bytes"
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not (data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC) or is_webp):
        return "the decoded data is not a PNG, JPEG or WebP image"
    return None
