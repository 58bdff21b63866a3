"""Helpers for the Gemini emulator's tests: a thin typed HTTP client and request builders."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from batcher.emulator import GeminiEmulator

from .emu_helpers import LITE, Reply

StartGemini = Callable[..., Awaitable[GeminiEmulator]]
MakeGemini = Callable[..., Awaitable["GeminiApi"]]
RPC = "type.googleapis.com/google.rpc."


def image_request(
    prompt: str = "a banana",
    ratio: str | None = "1:1",
    size: str | None = None,
    modalities: list[str] | None = None,
    images: tuple[bytes, ...] = (),
) -> dict[str, Any]:
    """A GenerateContentRequest in camelCase: the prompt, then any input images as inlineData parts."""
    parts: list[dict[str, Any]] = [{"text": prompt}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(i).decode()}} for i in images]
    image_config: dict[str, Any] = {}
    if ratio is not None:
        image_config["aspectRatio"] = ratio
    if size is not None:
        image_config["imageSize"] = size
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": modalities or ["IMAGE"], "imageConfig": image_config},
    }


def detail(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The google.rpc detail of a kind (RetryInfo, QuotaFailure, ErrorInfo) in an error body."""
    found = [d for d in body["error"].get("details", []) if d["@type"] == RPC + kind]
    assert len(found) == 1, body
    one: dict[str, Any] = found[0]
    return one


def image_bytes(body: dict[str, Any]) -> bytes:
    """The one image of a GenerateContentResponse, decoded."""
    parts = [p for p in body["candidates"][0]["content"]["parts"] if "inlineData" in p]
    assert len(parts) == 1, body
    assert parts[0]["inlineData"]["mimeType"] == "image/png"
    return base64.b64decode(parts[0]["inlineData"]["data"])


class GeminiApi:
    """generateContent against one Gemini emulator, sending its key unless told otherwise."""

    def __init__(self, session: aiohttp.ClientSession, emu: GeminiEmulator) -> None:
        self.session = session
        self.emu = emu
        self.headers = {"x-goog-api-key": emu.api_key}

    async def generate(
        self,
        body: Any = None,
        *,
        model: str = LITE,
        version: str = "v1beta",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        url = f"{self.emu.origin}/{version}/models/{model}:generateContent"
        payload = image_request() if body is None else body
        async with self.session.post(
            url, json=payload, headers=self.headers if headers is None else headers, params=params
        ) as resp:
            return Reply(resp.status, await resp.json(), dict(resp.headers))

    async def admin(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.session.request(method, f"{self.emu.origin}/_emulator/{path}", **kwargs) as resp:
            return Reply(resp.status, await resp.json(), dict(resp.headers))
