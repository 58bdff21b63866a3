"""Helpers for the Vertex emulator's tests: real google-auth credentials, and a thin typed HTTP client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from batcher.emulator.vertex.server import VertexEmulator

from .emu_helpers import LITE, Reply
from .gemini_helpers import image_request

StartVertex = Callable[..., Awaitable[VertexEmulator]]
MakeVertex = Callable[..., Awaitable["VertexApi"]]
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def credentials(info: dict[str, str]) -> service_account.Credentials:
    """google-auth's service-account credentials from a key file's contents, as ADC would load them."""
    creds: service_account.Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        info, scopes=[CLOUD_PLATFORM]
    )
    return creds


async def fetch_token(creds: service_account.Credentials) -> str:
    """Run google-auth's (blocking) refresh off the loop the emulator serves on; the access token."""
    await asyncio.to_thread(creds.refresh, Request())
    token = creds.token
    assert isinstance(token, str)
    return token


def rows_jsonl(*prompts: str, ratio: str = "1:1") -> bytes:
    """A batch input: one ``{"key", "request"}`` line per prompt, keyed by the prompt."""
    lines = [json.dumps({"key": p, "request": image_request(p, ratio=ratio)}) for p in prompts]
    return ("\n".join(lines) + "\n").encode()


class VertexApi:
    """Online calls, batch prediction jobs and Cloud Storage against one Vertex emulator over plain HTTP."""

    def __init__(self, session: aiohttp.ClientSession, emu: VertexEmulator, token: str) -> None:
        self.session = session
        self.emu = emu
        self.token = token
        self.location = "global"

    @property
    def project_base(self) -> str:
        return f"{self.emu.origin}/v1/projects/{self.emu.project}/locations/{self.location}"

    async def call(self, method: str, url: str, *, auth: bool = True, **kwargs: Any) -> Reply:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        headers.update(kwargs.pop("headers", {}))
        async with self.session.request(method, url, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {"text": await resp.text()}
            return Reply(resp.status, body, dict(resp.headers))

    async def generate(
        self, body: Any = None, *, model: str = LITE, project: str | None = None, location: str = "global", **kw: Any
    ) -> Reply:
        url = (
            f"{self.emu.origin}/v1/projects/{project or self.emu.project}/locations/{location}"
            f"/publishers/google/models/{model}:generateContent"
        )
        return await self.call("POST", url, json=image_request() if body is None else body, **kw)

    async def express(self, body: Any = None, *, key: str | None = None, model: str = LITE) -> Reply:
        url = f"{self.emu.origin}/v1/publishers/google/models/{model}:generateContent"
        headers = {} if key == "" else {"x-goog-api-key": key or self.emu.api_key}
        return await self.call("POST", url, auth=False, headers=headers, json=image_request() if body is None else body)

    async def put_object(self, bucket: str, name: str, data: bytes) -> Reply:
        url = f"{self.emu.origin}/upload/storage/v1/b/{bucket}/o"
        params = {"uploadType": "media", "name": name}
        return await self.call("POST", url, auth=False, params=params, data=data)

    async def create_job(
        self, input_uri: str, prefix: str = "gs://bkt/out", display_name: str = "job", model: str = LITE
    ) -> Reply:
        body = {
            "displayName": display_name,
            "model": f"publishers/google/models/{model}",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [input_uri]}},
            "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": prefix}},
        }
        return await self.call("POST", f"{self.project_base}/batchPredictionJobs", json=body)

    async def job(self, name: str, method: str = "GET", suffix: str = "") -> Reply:
        return await self.call(method, f"{self.emu.origin}/v1/{name}{suffix}")

    async def list_jobs(self, **params: str) -> Reply:
        return await self.call("GET", f"{self.project_base}/batchPredictionJobs", params=params)

    async def output_lines(self, directory: str) -> dict[str, list[dict[str, Any]]]:
        """Every *.jsonl object under a job's gcsOutputDirectory, by object name, each as its parsed lines."""
        bucket, _, prefix = directory.removeprefix("gs://").partition("/")
        listing = await self.call(
            "GET", f"{self.emu.origin}/storage/v1/b/{bucket}/o", auth=False, params={"prefix": prefix.rstrip("/") + "/"}
        )
        assert listing.status == 200, listing.body
        out: dict[str, list[dict[str, Any]]] = {}
        for item in listing.body.get("items", []):
            url = f"{self.emu.origin}/storage/v1/b/{bucket}/o/{quote(item['name'], safe='')}"
            async with self.session.get(url, params={"alt": "media"}) as resp:
                assert resp.status == 200
                out[item["name"]] = [json.loads(line) for line in (await resp.text()).splitlines()]
        return out
