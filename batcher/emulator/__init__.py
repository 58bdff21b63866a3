"""An emulator of the LinkModel image API for tests, demos and benchmarks; imports nothing else of batcher.

The server (and aiohttp with it) loads on first use of `Emulator` or `BackgroundEmulator`, so a command that only
parses an emulator option stays quick to start.
"""

from typing import TYPE_CHECKING, Any

from batcher.emulator.config import EmulatorConfig
from batcher.emulator.latency import Latency

if TYPE_CHECKING:
    from batcher.emulator.server import BackgroundEmulator, Emulator
    from batcher.emulator.stats import RequestEvent, Stats

__all__ = ["BackgroundEmulator", "Emulator", "EmulatorConfig", "Latency", "RequestEvent", "Stats"]


def __getattr__(name: str) -> Any:
    if name in ("Emulator", "BackgroundEmulator"):
        from batcher.emulator import server

        return getattr(server, name)
    if name in ("RequestEvent", "Stats"):
        from batcher.emulator import stats

        return getattr(stats, name)
    raise AttributeError(name)
