"""Fixtures for the emulator tests: real servers on loopback ports, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from batcher.emulator.vertex.server import VertexEmulator

from ..conftest import _servers
from .emu_helpers import Api, MakeApi, StartEmulator
from .gemini_helpers import GeminiApi, MakeGemini, StartGemini
from .vertex_helpers import MakeVertex, StartVertex, VertexApi, credentials, fetch_token


@pytest.fixture
def start_emulator(start_emu: StartEmulator) -> StartEmulator:
    """A factory: ``await start_emulator(fail_rate=1.0)`` starts an emulator with those knobs (the suite's
    `start_emu`, under the name these tests use)."""
    return start_emu


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def make_api(start_emulator: StartEmulator, session: aiohttp.ClientSession) -> MakeApi:
    """A factory: ``api = await make_api(latency="fixed:0.3")``; `api.emu` is the emulator behind it."""

    async def make(**knobs: Any) -> Api:
        return Api(session, await start_emulator(**knobs))

    return make


@pytest.fixture
async def make_gemini(start_gemini: StartGemini, session: aiohttp.ClientSession) -> MakeGemini:
    """A factory: ``api = await make_gemini(refusal_rate=1.0)``; `api.emu` is the Gemini emulator behind it."""

    async def make(**knobs: Any) -> GeminiApi:
        return GeminiApi(session, await start_gemini(**knobs))

    return make


@pytest.fixture
async def start_vertex() -> AsyncIterator[StartVertex]:
    """`await start_vertex(dsq_429_rate=1.0, ...)`: a Vertex AI emulator on a loopback port, closed after the test."""
    async with _servers(VertexEmulator) as start:
        yield start


@pytest.fixture
def make_vertex(start_vertex: StartVertex, session: aiohttp.ClientSession) -> MakeVertex:
    """A factory: ``vx = await make_vertex(dsq_429_rate=1.0)``: a VertexApi holding a token google-auth fetched
    with a key file the emulator issued; `vx.emu` is the emulator behind it."""

    async def make(**knobs: Any) -> VertexApi:
        emu = await start_vertex(**knobs)
        return VertexApi(session, emu, await fetch_token(credentials(emu.new_key_file())))

    return make
