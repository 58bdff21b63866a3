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
from collections.abc import AsyncIterator, Callable
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
_LIFTED = "\x00batcher:lifted:"  # + its number: stands in the document for a lifted string (no reply holds a NUL)
_DATA_KEY = b'"data"'
_WHITESPACE = b" \t\r\n"


def parse_reply(raw: bytes) -> dict[str, Any] | None:
    """A GenerateContentResponse, as `parse_json`, but an image's base64 stays in `raw`: its span is cut out before
    parsing and its bytes (a memoryview) stand in the inlineData's `data`. That spares the JSON parser and the
    UTF-8 decoder their passes over 2 MB, and a 2 MB str. Only for spans that are plain JSON strings (no escape)
    of an inlineData part's `data`; any other body is parsed whole."""
    return _parse(raw, _itself)


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """A line of batch results whose `response` is a GenerateContentResponse (Gemini Batch Mode's ``{"key",
    "response"}``, Vertex AI's ``{"request", "response", "status"}``), parsed as `parse_reply` parses a reply:
    the response's image stays a memoryview into `raw`. Long strings elsewhere (a request's input images, echoed)
    are put back as str."""
    return _parse(raw, _response_of)


def _itself(doc: dict[str, Any]) -> Any:
    return doc


def _response_of(doc: dict[str, Any]) -> Any:
    return doc.get("response")


def _parse(raw: bytes, response_of: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    lifted = _parse_lifted(raw, response_of) if len(raw) >= LIFT_MIN_BYTES else None
    return lifted if lifted is not None else parse_json(raw)


def _spans(raw: bytes) -> list[tuple[int, int]]:
    """Where the long, unescaped string values of `"data"` keys lie in `raw`: (start, end) inside the quotes.
    bytes.find, not a regex: the scan crosses 2 MB of base64 at memchr speed."""
    spans: list[tuple[int, int]] = []
    at = raw.find(_DATA_KEY)
    while at != -1:
        i = at + len(_DATA_KEY)
        while i < len(raw) and raw[i] in _WHITESPACE:
            i += 1
        if i < len(raw) and raw[i] == 0x3A:  # ':'
            i += 1
            while i < len(raw) and raw[i] in _WHITESPACE:
                i += 1
        else:
            i = -1
        if i != -1 and i < len(raw) and raw[i] == 0x22:  # '"': the value is a string
            start = i + 1
            end = raw.find(b'"', start)
            if end == -1:
                break
            if end - start >= LIFT_MIN_BYTES and raw.find(b"\\", start, end) == -1:
                spans.append((start, end))
            at = raw.find(_DATA_KEY, end + 1)
        else:
            at = raw.find(_DATA_KEY, at + len(_DATA_KEY))
    return spans


def _parse_lifted(raw: bytes, response_of: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    spans = _spans(raw)
    if not spans:
        return None
    pieces: list[bytes] = []
    at = 0
    for n, (start, end) in enumerate(spans):
        pieces += (raw[at:start], json.dumps(_LIFTED + str(n))[1:-1].encode())
        at = end
    pieces.append(raw[at:])
    doc = parse_json(b"".join(pieces))
    if doc is None:
        return None
    view = memoryview(raw)
    placed = 0
    for part in _parts(response_of(doc)):  # the response's images: memoryviews into raw
        inline = part.get("inlineData") if isinstance(part, dict) else None
        if not isinstance(inline, dict):
            continue
        lifted = _lifted_number(inline.get("data"))
        if lifted is not None and lifted < len(spans):
            inline["data"] = view[spans[lifted][0] : spans[lifted][1]]
            placed += 1
    if placed < len(spans):  # some elsewhere (an echoed request's images): put back as text
        placed += _put_back(doc, raw, spans)
    return doc if placed == len(spans) else None  # a span that was some other "data": parse the body whole


def _lifted_number(value: object) -> int | None:
    if isinstance(value, str) and value.startswith(_LIFTED) and value[len(_LIFTED) :].isdigit():
        return int(value[len(_LIFTED) :])
    return None


def _put_back(node: object, raw: bytes, spans: list[tuple[int, int]]) -> int:
    """Every lifted string left in `node` (a small document: its long strings are lifted) restored as str."""
    count = 0
    if isinstance(node, dict):
        for k, v in node.items():
            n = _lifted_number(v)
            if n is not None and n < len(spans):
                node[k] = raw[spans[n][0] : spans[n][1]].decode("ascii", "replace")
                count += 1
            else:
                count += _put_back(v, raw, spans)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            n = _lifted_number(v)
            if n is not None and n < len(spans):
                node[i] = raw[spans[n][0] : spans[n][1]].decode("ascii", "replace")
                count += 1
            else:
                count += _put_back(v, raw, spans)
    return count


def _parts(response: object) -> list[Any]:
    candidates = response.get("candidates") if isinstance(response, dict) else None
    out: list[Any] = []
    for candidate in candidates if isinstance(candidates, list) else []:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        out += parts if isinstance(parts, list) else []
    return out


# --- a results file, line by line -------------------------------------------------------------------------

KEY_SNIFF_BYTES = 512  # of an over-long line, kept to name its key


@dataclass(frozen=True)
class Overlong:
    """A line past the cap, skipped to its end: `head` (its first bytes) may still name its key."""

    head: bytes


async def read_lines(chunks: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes | Overlong]:
    """A JSONL body's lines (without b"\\n"; blank ones skipped), one in memory at a time, each joined once from
    the pieces its source delivered (a response's `content.iter_any()`, an object's reads) (no growing buffer, no copy per piece); a line past `cap` bytes is
    skipped to its end and yielded as Overlong. aiohttp's own readline refuses lines past 128 KB, hence this."""
    pieces: list[bytes] = []
    held = 0
    over: bytes | None = None  # the head of a line past the cap
    async for chunk in chunks:
        start, size = 0, len(chunk)
        while start < size:
            end = chunk.find(b"\n", start)
            stop = size if end < 0 else end
            if over is None and stop > start:
                if held + stop - start > cap:
                    over = _head([*pieces, chunk[start : start + KEY_SNIFF_BYTES]])
                    pieces, held = [], 0
                else:
                    pieces.append(chunk if start == 0 and stop == size else chunk[start:stop])
                    held += stop - start
            if end < 0:
                break
            start = end + 1
            if over is not None:
                yield Overlong(over)
                over = None
            elif pieces:
                line = _joined(pieces)
                pieces, held = [], 0
                if line.strip():  # bytes.strip gives the line itself back when there is nothing to strip
                    yield line
    if over is not None:
        yield Overlong(over)
    elif pieces and (line := _joined(pieces)).strip():
        yield line


def _head(pieces: list[bytes]) -> bytes:
    head = b""
    for piece in pieces:
        head += piece[: KEY_SNIFF_BYTES - len(head)]
    return head


def _joined(pieces: list[bytes]) -> bytes:
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


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


def int64(fields: dict[str, Any], name: str) -> int:
    """A count of a resource as proto JSON writes it: int64 as a string, a zero left out."""
    value = fields.get(name)
    try:
        return int(value) if isinstance(value, int | str) else 0
    except ValueError:
        return 0


def status_message(error: object, default: str) -> str | None:
    """A google.rpc.Status as one short line (`message (code N)`); None when `error` is none."""
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or default)[:DETAIL_CHARS]
    return message + (f" (code {error['code']})" if isinstance(error.get("code"), int) else "")
