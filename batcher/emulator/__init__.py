"""Emulators of the LinkModel image API, of Google's Gemini API and of Vertex AI, for tests, demos and benchmarks;
they import nothing else of batcher.

The server (and aiohttp with it) loads on first use of `Emulator` or `BackgroundEmulator`, so a command that only
parses an emulator option stays quick to start.
"""

from typing import TYPE_CHECKING, Any

from batcher.emulator.config import EmulatorConfig
from batcher.emulator.gemini.config import GeminiConfig
from batcher.emulator.latency import Latency
from batcher.emulator.vertex.config import VertexConfig

if TYPE_CHECKING:
    from batcher.emulator.gemini.server import GeminiEmulator
    from batcher.emulator.gemini.stats import GeminiStats
    from batcher.emulator.server import BackgroundEmulator, Emulator
    from batcher.emulator.stats import RequestEvent, Stats
    from batcher.emulator.vertex.server import VertexEmulator
    from batcher.emulator.vertex.stats import VertexStats

__all__ = [
    "BackgroundEmulator",
    "Emulator",
    "EmulatorConfig",
    "GeminiConfig",
    "GeminiEmulator",
    "GeminiStats",
    "Latency",
    "RequestEvent",
    "Stats",
    "VertexConfig",
    "VertexEmulator",
    "VertexStats",
]


def __getattr__(name: str) -> Any:
    if name in ("Emulator", "BackgroundEmulator"):
        from batcher.emulator import server

        return getattr(server, name)
    if name in ("RequestEvent", "Stats"):
        from batcher.emulator import stats

        return getattr(stats, name)
    if name == "GeminiEmulator":
        from batcher.emulator.gemini import server as gemini_server

        return gemini_server.GeminiEmulator
    if name == "GeminiStats":
        from batcher.emulator.gemini import stats as gemini_stats

        return gemini_stats.GeminiStats
    if name == "VertexEmulator":
        from batcher.emulator.vertex import server as vertex_server

        return vertex_server.VertexEmulator
    if name == "VertexStats":
        from batcher.emulator.vertex import stats as vertex_stats

        return vertex_stats.VertexStats
    raise AttributeError(name)
