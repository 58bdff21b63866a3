"""Factories shared by the tiers: real SQLite stores, real emulators on loopback, manifests on disk."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from batcher.emulator import Emulator, GeminiEmulator
from batcher.emulator.serving import LoopbackServer
from batcher.emulator.vertex.server import VertexEmulator
from batcher.store import Store


def _closed_loopback_port() -> int:
    """A loopback port nothing listens on: bound, read, and released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pytest_configure(config: pytest.Config) -> None:
    """No test may reach the cloud metadata address (169.254.169.254) that google-auth probes when it finds no
    credentials. Set before anything imports google-auth, which reads these once; both it and gcsfs want
    NO_GCE_CHECK spelled "true" in lower case."""
    closed = f"127.0.0.1:{_closed_loopback_port()}"
    os.environ["NO_GCE_CHECK"] = "true"
    os.environ["GCE_METADATA_HOST"] = closed
    os.environ["GCE_METADATA_IP"] = closed


OpenStore = Callable[..., Awaitable[Store]]
StartEmulator = Callable[..., Awaitable[Emulator]]
StartGemini = Callable[..., Awaitable[GeminiEmulator]]
StartVertex = Callable[..., Awaitable[VertexEmulator]]
WriteManifest = Callable[..., Path]


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[OpenStore]:
    """`await open_store()` opens (and migrates) a SQLite store in tmp_path; closed after the test."""
    opened: list[Store] = []

    async def open_(name: str = "batcher.db") -> Store:
        store = await Store.open(str(tmp_path / name))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


S = TypeVar("S", bound=LoopbackServer)


@contextlib.asynccontextmanager
async def _servers(kind: Callable[..., S]) -> AsyncIterator[Callable[..., Awaitable[S]]]:
    """A factory of started emulators of one kind, each closed when the test ends."""
    started: list[S] = []

    async def start(**knobs: Any) -> S:
        emu = kind(**knobs)
        await emu.start()
        started.append(emu)
        return emu

    try:
        yield start
    finally:
        for emu in started:
            await emu.close()


@pytest.fixture
async def start_emu() -> AsyncIterator[StartEmulator]:
    """`await start_emu(fail_rate=0.5, ...)`: an emulator on a loopback port, closed after the test."""
    async with _servers(Emulator) as start:
        yield start


@pytest.fixture
async def start_gemini() -> AsyncIterator[StartGemini]:
    """`await start_gemini(refusal_rate=1.0, ...)`: a Gemini API emulator on a loopback port, closed after the test."""
    async with _servers(GeminiEmulator) as start:
        yield start


@pytest.fixture
async def start_vertex() -> AsyncIterator[StartVertex]:
    """`await start_vertex(dsq_429_rate=1.0, ...)`: a Vertex AI emulator on a loopback port, closed after the test."""
    async with _servers(VertexEmulator) as start:
        yield start


@pytest.fixture
def write_manifest(tmp_path: Path) -> WriteManifest:
    """`write_manifest(tasks=[...], **top)` writes a YAML manifest whose outputs go under tmp_path/out."""

    def write(name: str = "job.yaml", *, tasks: list[dict[str, Any]] | None = None, **top: Any) -> Path:
        doc: dict[str, Any] = {"job": Path(name).stem, "output": {"dir": str(tmp_path / "out")}}
        doc.update(top)
        if tasks is not None:
            doc["tasks"] = tasks
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _no_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach for a real key or endpoint from the developer's environment."""
    for var in (
        "LINKMODEL_API_KEY",
        "LINKMODEL_BASE_URL",
        "BATCHER_DB",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_BASE_URL",
        "GOOGLE_GEMINI_BASE_URL",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_VERTEX_BASE_URL",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(var, raising=False)


def pg_url() -> str | None:
    return os.environ.get("BATCHER_TEST_PG_URL")
