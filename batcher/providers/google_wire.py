"""What every Google client shares (Gemini online, Gemini Batch Mode, Vertex AI): the GenerateContentRequest of a
task, Google's error body and its details, capped bodies, base64, and a GenerateContentResponse judged as an
image, a refusal or a garbled reply.

Online, that response is the reply to generateContent; in a batch, each line of the results holds one. All must
classify it the same way, so a refusal online is a refusal in a batch, on either API.

Speed: a 1.5 MB image arrives as 2 MB of base64 inside the JSON. The standard library's decoder takes about 4 ms
for it, pybase64's SIMD decoder about 0.1 ms (bench/google_reply.py): the largest cost of a reply, so pybase64.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pybase64

from batcher.catalog import GEMINI
from batcher.providers.base import FailureKind, Image, Request
from batcher.retry import RETRY_AFTER_CAP_S

KEY_HEADER = "x-goog-api-key"
DETAIL_CHARS = 300  # of a message kept in the ledger
RPC = "type.googleapis.com/google.rpc."
TRANSIENT_5XX = (500, 503, 504)

# A candidate that ended without an image on purpose: the model refused, trying again gives the same.
REFUSALS = frozenset(
    {
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "PROHIBITED_CONTENT",
        "SAFETY",
        "RECITATION",
        "IMAGE_RECITATION",
        "NO_IMAGE",
        "IMAGE_OTHER",
        "OTHER",
        "BLOCKLIST",
        "SPII",
        "STOP",  # a clean stop with no image is no image all the same
    }
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # a protobuf Duration in JSON: "47s", "0.5s"


# --- a GenerateContentResponse ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReply:
    """The response holds an image: generated, and billed."""

    image: Image
    response_id: str | None
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoImage:
    """The response ended without an image: refused (BLOCKED) or a generation that failed (GENERATION)."""

    reason: str
    kind: FailureKind
    response_id: str | None
    outcome: str  # the ledger's word: blocked | generation_failed


@dataclass(frozen=True)
class Garbled:
    """Not a response that proves either: an image may have been made and billed."""

    message: str
    response_id: str | None


def read_response(doc: dict[str, Any]) -> ImageReply | NoImage | Garbled:
    """Judge a GenerateContentResponse: the first image part wins; else a refusal or a failure, by reason."""
    response_id = doc.get("responseId") if isinstance(doc.get("responseId"), str) else None
    usage = doc.get("usageMetadata")
    usage = usage if isinstance(usage, dict) else {}
    candidates = doc.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        feedback = doc.get("promptFeedback")
        block = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if isinstance(block, str) and block:
            reason = f"blocked by the model: {block} (promptFeedback.blockReason: the prompt got no candidate)"
            return NoImage(reason, FailureKind.BLOCKED, response_id, "blocked")
        return Garbled("neither a candidate nor a blockReason: the image may have been made and billed", response_id)
    candidate = candidates[0]
    finish = str(candidate.get("finishReason") or "FINISH_REASON_UNSPECIFIED")
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    parts = parts if isinstance(parts, list) else []
    for part in parts:
        inline = part.get("inlineData") if isinstance(part, dict) else None
        if not isinstance(inline, dict) or not isinstance(inline.get("data"), str | memoryview):
            continue
        mime = str(inline.get("mimeType") or "image/png")
        if not mime.startswith("image/"):
            continue
        data = b64decode(inline["data"])
        if not data:
            return Garbled("an image that is not valid base64: the image was made and billed, but is lost", response_id)
        return ImageReply(Image(data=data, mime_type=mime), response_id, usage)
    text = " ".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
    said = f"; the model said: {text.strip()[:150]}" if text.strip() else ""
    if finish in REFUSALS:
        reason = f"blocked by the model: {finish} (finishReason, no image in the reply){said}"
        return NoImage(reason, FailureKind.BLOCKED, response_id, "blocked")
    reason = f"the generation ended without an image: finishReason {finish}{said}"
    return NoImage(reason, FailureKind.GENERATION, response_id, "generation_failed")


def image_tokens(usage: dict[str, Any]) -> int | None:
    """The IMAGE modality's count in usageMetadata.candidatesTokensDetails: what an image is billed by."""
    details = usage.get("candidatesTokensDetails")
    for d in details if isinstance(details, list) else []:
        if isinstance(d, dict) and d.get("modality") == "IMAGE" and isinstance(d.get("tokenCount"), int):
            count: int = d["tokenCount"]
            return count
    return None


# --- bodies -----------------------------------------------------------------------------------------


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The whole body, or None past `cap` bytes. Chunks joined once: a 3 MB reply is copied once, not grown."""
    chunks: list[bytes] = []
    got = 0
    async for chunk in resp.content.iter_any():
        got += len(chunk)
        if got > cap:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(raw: bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


LIFT_MIN_BYTES = 64 << 10  # an image's base64 at least this long is decoded from the body's bytes, not parsed
_LIFTED = "\x00batcher:lifted"  # stands in the parsed document for the lifted string (no reply holds a NUL)
_DATA_KEY = re.compile(rb'"data"\s*:\s*"')


def parse_reply(raw: bytes) -> dict[str, Any] | None:
    """A GenerateContentResponse, as `parse_json`, but an image's base64 stays in `raw`: its span is cut out before
    parsing and its bytes (a memoryview) stand in the inlineData's `data`. That spares the JSON parser and the
    UTF-8 decoder their passes over 2 MB, and a 2 MB str. Only when the span is one plain JSON string (no escape)
    in an inlineData part's `data`; any other body is parsed whole."""
    lifted = _parse_lifted(raw) if len(raw) >= LIFT_MIN_BYTES else None
    return lifted if lifted is not None else parse_json(raw)


def _parse_lifted(raw: bytes) -> dict[str, Any] | None:
    key = _DATA_KEY.search(raw)
    if key is None:
        return None
    start = key.end()
    end = raw.find(b'"', start)
    if end - start < LIFT_MIN_BYTES or raw.find(b"\\", start, end) != -1:
        return None  # not there, short, or escaped: the JSON parser reads it
    doc = parse_json(b"".join((raw[:start], json.dumps(_LIFTED)[1:-1].encode(), raw[end:])))
    if doc is None:
        return None
    for part in _parts(doc):
        inline = part.get("inlineData") if isinstance(part, dict) else None
        if isinstance(inline, dict) and inline.get("data") == _LIFTED:
            inline["data"] = memoryview(raw)[start:end]
            return doc
    return None  # the span was some other "data": parse the body whole


def _parts(doc: dict[str, Any]) -> list[Any]:
    candidates = doc.get("candidates")
    out: list[Any] = []
    for candidate in candidates if isinstance(candidates, list) else []:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        out += parts if isinstance(parts, list) else []
    return out


def b64decode(text: str | bytes | memoryview) -> bytes:
    """Decoded bytes, or b"" when `text` is not base64. pybase64 validates as it decodes (SIMD: ~40 times the
    standard library's speed); proto JSON also allows the URL-safe alphabet, tried second, as strictly."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        padded = text + "=" * (-len(text) % 4) if isinstance(text, str) else bytes(text) + b"=" * (-len(text) % 4)
        return pybase64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return b""


# --- Google's error body ----------------------------------------------------------------------------


def api_error(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `error` of Google's error body ``{"error": {code, message, status, details}}``, if that is the body."""
    error = doc.get("error") if doc is not None else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return None
    return error


def details(error: dict[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    found = error.get("details") if error is not None else None
    if not isinstance(found, list):
        return []
    return [d for d in found if isinstance(d, dict) and d.get("@type") == RPC + kind]


def quota_ids(error: dict[str, Any] | None) -> list[str]:
    out: list[str] = []
    for failure in details(error, "QuotaFailure"):
        violations = failure.get("violations")
        for v in violations if isinstance(violations, list) else []:
            if isinstance(v, dict) and isinstance(v.get("quotaId"), str):
                out.append(v["quotaId"])
    return out


def reasons(error: dict[str, Any] | None) -> set[str]:
    return {str(d.get("reason")) for d in details(error, "ErrorInfo")}


def retry_delay(error: dict[str, Any] | None) -> float | None:
    """RetryInfo.retryDelay in seconds ("47s"), capped like a Retry-After."""
    for info in details(error, "RetryInfo"):
        delay = info.get("retryDelay")
        m = _DURATION.match(delay) if isinstance(delay, str) else None
        if m is not None:
            return min(float(m[1]), RETRY_AFTER_CAP_S)
    return None


# --- the request ------------------------------------------------------------------------------------


class Unsendable(ValueError):
    """A request that cannot be put on the wire as asked; the message says why."""


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
    """The catalog's `16x9` as Google's `16:9` (the Gemini API and Vertex serve the same ratios)."""
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
