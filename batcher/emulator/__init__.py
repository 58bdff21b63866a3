"""An emulator of the LinkModel image API for tests, demos and benchmarks; imports nothing else of batcher."""

from batcher.emulator.config import EmulatorConfig
from batcher.emulator.latency import Latency
from batcher.emulator.server import BackgroundEmulator, Emulator
from batcher.emulator.stats import RequestEvent, Stats

__all__ = ["BackgroundEmulator", "Emulator", "EmulatorConfig", "Latency", "RequestEvent", "Stats"]
