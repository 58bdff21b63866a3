"""Helpers for the Gemini emulator's tests: a thin typed HTTP client and request builders."""

from __future__ import annotations

import base64
import json
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


def jsonl(*prompts: str, ratio: str = "1:1") -> bytes:
    """A batch input file: one ``{"key", "request"}`` line per prompt, keyed by the prompt."""
    lines = [json.dumps({"key": p, "request": image_request(p, ratio=ratio)}) for p in prompts]
    return ("\n".join(lines) + "\n").encode()


class BatchApi:
    """The Files API and Batch Mode against one Gemini emulator, over plain HTTP."""

    def __init__(self, api: GeminiApi, version: str = "v1beta") -> None:
        self.api = api
        self.version = version
        self.base = f"{api.emu.origin}/{version}"

    async def call(self, method: str, url: str, **kwargs: Any) -> Reply:
        async with self.api.session.request(method, url, headers=self.api.headers, **kwargs) as resp:
            return Reply(resp.status, await resp.json(), dict(resp.headers))

    async def start_upload(self, size: int, display_name: str = "input") -> str:
        headers = {
            **self.api.headers,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        }
        url = f"{self.api.emu.origin}/upload/{self.version}/files"
        body = {"file": {"displayName": display_name}}
        async with self.api.session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200 and resp.headers["X-Goog-Upload-Status"] == "active"
            return resp.headers["X-Goog-Upload-URL"]

    async def send_chunk(self, url: str, data: bytes, offset: int, command: str) -> tuple[int, str, Any]:
        """One chunk to a session URL (no key: the URL is the credential); (status, upload status, body)."""
        headers = {"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)}
        async with self.api.session.post(url, data=data, headers=headers) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, resp.headers.get("X-Goog-Upload-Status", ""), body

    async def upload(self, data: bytes) -> str:
        """Upload a file in one chunk; its name (files/...)."""
        url = await self.start_upload(len(data))
        status, upload_status, body = await self.send_chunk(url, data, 0, "upload, finalize")
        assert (status, upload_status) == (200, "final"), body
        name: str = body["file"]["name"]
        return name

    async def create(self, file_name: str, display_name: str = "job", model: str = LITE) -> Reply:
        body = {"batch": {"displayName": display_name, "inputConfig": {"fileName": file_name}}}
        return await self.call("POST", f"{self.base}/models/{model}:batchGenerateContent", json=body)

    async def get(self, name: str) -> Reply:
        return await self.call("GET", f"{self.base}/{name}")

    async def download(self, file_name: str, prefix: str = "/download") -> tuple[int, list[dict[str, Any]]]:
        url = f"{self.api.emu.origin}{prefix}/{self.version}/{file_name}:download"
        async with self.api.session.get(url, params={"alt": "media"}, headers=self.api.headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                return resp.status, [json.loads(text)]
            return resp.status, [json.loads(line) for line in text.splitlines()]
