"""The GenerateContentResponse bodies: an image, a candidate refused without one, or a blocked prompt."""

from __future__ import annotations

import json
from typing import Any

from batcher.emulator.gemini.facts import CHARS_PER_TOKEN, IMAGE_TOKENS, INPUT_IMAGE_TOKENS
from batcher.emulator.gemini.request import GenerateSpec

IMAGE_SLOT = "\x00image"  # stands in a reply for its image's base64 while the reply is encoded (encode_with_image)
_SLOT_JSON = json.dumps(IMAGE_SLOT)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ASCII_KEPT = 8
_ascii: dict[int, tuple[str, bytes]] = {}  # id of a cached image's base64 -> (it, its bytes)
IMAGE_MIME = "image/png"
TEXT_REPLY = "Here is the image you asked for."  # sent when TEXT is among the modalities


def _prompt_tokens(spec: GenerateSpec) -> int:
    return max(1, len(spec.prompt) // CHARS_PER_TOKEN) + INPUT_IMAGE_TOKENS * spec.input_images


def _usage(spec: GenerateSpec, image: bool) -> dict[str, Any]:
    prompt = _prompt_tokens(spec)
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "totalTokenCount": prompt,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if image:
        out = IMAGE_TOKENS[spec.tier]
        usage["candidatesTokenCount"] = out
        usage["totalTokenCount"] = prompt + out
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": out}]
    return usage


def image_reply(spec: GenerateSpec, b64: str, response_id: str) -> dict[str, Any]:
    """A STOP candidate holding the image as an inlineData part (after a text part if TEXT was asked for)."""
    parts: list[dict[str, Any]] = [{"text": TEXT_REPLY}] if spec.with_text else []
    parts.append({"inlineData": {"mimeType": IMAGE_MIME, "data": b64}})
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": _usage(spec, image=True),
        "modelVersion": spec.model,
        "responseId": response_id,
    }


def refused_reply(spec: GenerateSpec, reason: str, response_id: str) -> dict[str, Any]:
    """A candidate that ended for `reason` with no image part."""
    return {
        "candidates": [{"finishReason": reason, "index": 0}],
        "usageMetadata": _usage(spec, image=False),
        "modelVersion": spec.model,
        "responseId": response_id,
    }


def blocked_reply(spec: GenerateSpec, reason: str, response_id: str) -> dict[str, Any]:
    """No candidates at all: the prompt itself was blocked."""
    return {
        "promptFeedback": {"blockReason": reason},
        "usageMetadata": _usage(spec, image=False),
        "modelVersion": spec.model,
        "responseId": response_id,
    }


def encode_with_image(doc: dict[str, Any], b64: str, end: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """`doc` (a reply or a results line holding IMAGE_SLOT where its image goes) as JSON bytes, then `end`, in three
    pieces: what comes before the image, its base64 `b64` as it is, and what follows. Base64 needs no escaping,
    and encoding 2 MB of it as JSON took the emulator 8 ms a reply; the middle piece is the same bytes object for
    every reply of that image (the few images the emulator serves are cached), so a stream writes it uncopied."""
    head, slot, tail = _dumps(doc).partition(_SLOT_JSON)
    if not slot:
        raise ValueError("the document holds no image slot")
    return head.encode() + b'"', _ascii_of(b64), b'"' + tail.encode() + end


def _ascii_of(b64: str) -> bytes:
    found = _ascii.get(id(b64))
    if found is None or found[0] is not b64:
        found = _ascii[id(b64)] = (b64, b64.encode("ascii"))
        while len(_ascii) > _ASCII_KEPT:
            del _ascii[next(iter(_ascii))]
    return found[1]
