"""Validation of a GenerateContentRequest. Pure: decoded JSON in, a spec or an error out.

Requests may spell fields in lowerCamelCase or snake_case (``generationConfig`` or ``generation_config``),
as protobuf JSON parsing allows.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batcher.emulator.gemini.facts import (
    DEFAULT_RATIO,
    DEFAULT_TIER,
    INPUT_MIME_TYPES,
    MODALITIES,
    MODELS,
)

MODEL_PREFIX = "models/"
_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")
FileLookup = Callable[[str], bool]  # whether a Files API name (files/...) exists


class BadRequest(ValueError):
    """An INVALID_ARGUMENT; the message names the field."""


class UnknownModel(LookupError):
    """A NOT_FOUND for the model."""


@dataclass(frozen=True, slots=True)
class GenerateSpec:
    """A validated image request."""

    model: str
    prompt: str
    ratio: str
    tier: str
    width: int
    height: int
    with_text: bool  # responseModalities holds TEXT as well as IMAGE
    input_images: int


def field(obj: Mapping[str, Any], camel: str, default: Any = None) -> Any:
    """A field by its camelCase name or its snake_case one."""
    if camel in obj:
        return obj[camel]
    return obj.get(_CAMEL_HUMP.sub("_", camel).lower(), default)


def model_id(raw: str) -> str:
    """The model id of a path segment (``gemini-...``) or a resource name (``models/gemini-...``)."""
    return raw[len(MODEL_PREFIX) :] if raw.startswith(MODEL_PREFIX) else raw


def check_model(model: str, version: str, method: str = "generateContent") -> None:
    if model not in MODELS:
        raise UnknownModel(
            f"models/{model} is not found for API version {version}, or is not supported for {method}. "
            "Call ListModels to see the list of available models and their supported methods."
        )


def parse_generate(
    body: Any, model: str, max_image_bytes: int, max_images: int, file_exists: FileLookup
) -> GenerateSpec:
    """Check a GenerateContentRequest for `model` (already known); raises BadRequest naming the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid JSON payload received. Expected an object.")
    texts, images = _contents(field(body, "contents"), max_image_bytes, file_exists)
    if not texts:
        raise BadRequest("contents: a text part with the prompt is required")
    if images > max_images:
        raise BadRequest(f"contents: at most {max_images} input images are supported, got {images}")
    config = field(body, "generationConfig", {})
    if not isinstance(config, dict):
        raise BadRequest("generationConfig must be an object")
    modalities = field(config, "responseModalities", ["TEXT", "IMAGE"])
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise BadRequest("generationConfig.responseModalities must be a list of modality names")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise BadRequest(f"generationConfig.responseModalities: unknown modality {unknown[0]!r}")
    if "IMAGE" not in modalities:
        # our choice: this emulator serves only image generation
        raise BadRequest("generationConfig.responseModalities must include IMAGE for an image model")
    image_config = field(config, "imageConfig", {})
    if not isinstance(image_config, dict):
        raise BadRequest("generationConfig.imageConfig must be an object")
    facts = MODELS[model]
    ratio = field(image_config, "aspectRatio", DEFAULT_RATIO)
    if not isinstance(ratio, str) or ratio not in facts.sizes_at_1k:
        raise BadRequest(
            f"imageConfig.aspectRatio {ratio!r} is not supported by {model}; use one of " + ", ".join(facts.sizes_at_1k)
        )
    tier = field(image_config, "imageSize", DEFAULT_TIER)
    if not isinstance(tier, str) or tier not in facts.tiers:
        raise BadRequest(
            f"imageConfig.imageSize {tier!r} is not supported by {model}; use one of {', '.join(facts.tiers)}"
        )
    width, height = facts.pixel_size(tier, ratio)
    return GenerateSpec(model, "\n".join(texts), ratio, tier, width, height, "TEXT" in modalities, images)


def _contents(contents: Any, max_image_bytes: int, file_exists: FileLookup) -> tuple[list[str], int]:
    if not isinstance(contents, list) or not contents:
        raise BadRequest("contents is required: a list of Content objects")
    texts: list[str] = []
    images = 0
    for i, content in enumerate(contents):
        parts = field(content, "parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise BadRequest(f"contents[{i}].parts is required: a list of parts")
        for j, part in enumerate(parts):
            where = f"contents[{i}].parts[{j}]"
            if not isinstance(part, dict):
                raise BadRequest(f"{where} must be an object")
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                texts.append(text)
            elif field(part, "inlineData") is not None:
                _check_inline(field(part, "inlineData"), where, max_image_bytes)
                images += 1
            elif field(part, "fileData") is not None:
                _check_file(field(part, "fileData"), where, file_exists)
                images += 1
            elif text is None:
                raise BadRequest(f"{where} must hold text, inlineData or fileData")
    return texts, images


def _check_inline(data: Any, where: str, max_image_bytes: int) -> None:
    if not isinstance(data, dict):
        raise BadRequest(f"{where}.inlineData must be an object")
    mime = field(data, "mimeType")
    if mime not in INPUT_MIME_TYPES:
        raise BadRequest(f"{where}.inlineData.mimeType {mime!r} is not a supported image type")
    encoded = data.get("data")
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest(f"{where}.inlineData.data is required: base64 image bytes")
    # Proto JSON bytes accept both the standard and the URL-safe alphabet.
    if len(encoded) // 4 * 3 > max_image_bytes + 3:
        raise BadRequest(f"{where}.inlineData is larger than {max_image_bytes} bytes")
    try:
        raw = b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed") from None
    if len(raw) > max_image_bytes:
        raise BadRequest(f"{where}.inlineData is larger than {max_image_bytes} bytes")


def _check_file(data: Any, where: str, file_exists: FileLookup) -> None:
    uri = field(data, "fileUri") if isinstance(data, dict) else None
    if not isinstance(uri, str) or not uri:
        raise BadRequest(f"{where}.fileData.fileUri is required")
    name = "files/" + uri.rstrip("/").rsplit("/files/", 1)[-1].removeprefix("files/")
    if not file_exists(name):
        raise BadRequest(f"File {name} does not exist or you do not have permission to access it")
