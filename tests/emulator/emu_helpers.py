"""Helpers for the emulator tests: a thin typed HTTP client and an independent PNG reader."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from batcher.emulator import Emulator
from batcher.emulator.clock import EmulatorClock

LITE = "gemini-3.1-flash-lite-image"
FLASH = "gemini-3.1-flash-image"
CLASSIC = "gemini-2.5-flash-image"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
StartEmulator = Callable[..., Awaitable[Emulator]]  # the start_emulator fixture
MakeApi = Callable[..., Awaitable["Api"]]  # the make_api fixture
# Samples per pixel by colour type: greyscale, RGB, palette, grey+alpha, RGBA.
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


async def until_waiting(clock: EmulatorClock, count: int, bound_s: float = 30.0) -> None:
    """Wait until `count` replies wait on the emulator's clock (an advance then ends them), however slow the
    machine; bounded, so a request that never comes fails the test instead of hanging it."""
    for _ in range(int(bound_s / 0.005)):
        if clock.sleepers >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{clock.sleepers} replies wait on the emulator's clock, not {count}")


@dataclass
class Reply:
    """An HTTP reply whose body was JSON."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def data(self) -> Any:
        return self.body["data"]


class Api:
    """Create, query and download against one emulator, sending its key unless told otherwise."""

    def __init__(self, session: aiohttp.ClientSession, emu: Emulator) -> None:
        self.session = session
        self.emu = emu
        self.headers = {"Authorization": f"Bearer {emu.api_key}"}

    async def create(self, headers: dict[str, str] | None = None, **fields: Any) -> Reply:
        body = {"model": LITE, "prompt": "a banana", "quality": "1K", "size": "1x1", **fields}
        return await self.post_json(body, headers)

    async def post_json(self, body: Any, headers: dict[str, str] | None = None) -> Reply:
        async with self.session.post(
            f"{self.emu.base_url}/image-generation", json=body, headers=self.headers if headers is None else headers
        ) as resp:
            return Reply(resp.status, await resp.json(), dict(resp.headers))

    async def query(self, task_id: str, headers: dict[str, str] | None = None) -> Reply:
        async with self.session.get(
            f"{self.emu.base_url}/query/image-generation",
            params={"task_id": task_id},
            headers=self.headers if headers is None else headers,
        ) as resp:
            return Reply(resp.status, await resp.json(), dict(resp.headers))

    async def download(self, url: str) -> tuple[int, bytes]:
        async with self.session.get(url) as resp:
            return resp.status, await resp.read()

    async def generate(self, **fields: Any) -> dict[str, Any]:
        """Create a task and query it once; returns the query's data (latency 0 makes it final)."""
        created = await self.create(**fields)
        assert created.status == 200, created.body
        queried = await self.query(created.data["task_id"])
        assert queried.status == 200, queried.body
        data: dict[str, Any] = queried.data
        return data

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(self.emu.origin + "/_emulator/stats") as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result


@dataclass
class Png:
    """What a PNG file says about itself, read without the emulator's code."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    palette: bytes
    pixels: bytes  # the decompressed, still filtered scanlines

    @property
    def row_bytes(self) -> int:
        return (self.width * self.bit_depth * _CHANNELS[self.colour_type] + 7) // 8


def read_png(data: bytes) -> Png:
    """Parse a PNG, checking the signature, every chunk's CRC, the chunk order and the IDAT size."""
    assert data[:8] == PNG_SIGNATURE, "bad PNG signature"
    offset = 8
    chunks: list[tuple[bytes, bytes]] = []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert len(body) == length, f"chunk {kind!r} is cut short"
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND", kinds
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (compression, filtering, interlace) == (0, 0, 0)
    palette = b"".join(body for kind, body in chunks if kind == b"PLTE")
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    png = Png(width, height, depth, colour, palette, pixels)
    assert len(pixels) == height * (1 + png.row_bytes), "IDAT does not hold exactly height scanlines"
    return png
