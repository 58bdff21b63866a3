"""The GenerateContentResponse bodies: an image, a candidate refused without one, or a blocked prompt."""

from __future__ import annotations

from typing import Any

from batcher.emulator.gemini.facts import CHARS_PER_TOKEN, IMAGE_TOKENS, INPUT_IMAGE_TOKENS
from batcher.emulator.gemini.request import GenerateSpec

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
