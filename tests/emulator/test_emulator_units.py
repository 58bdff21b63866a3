"""The pure parts, without a server: token bucket, PNG encoder and cache, config, independence."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import batcher.emulator
from batcher.emulator import EmulatorConfig
from batcher.emulator.images import ImageCache, encode_png
from batcher.emulator.limiter import TokenBucket, retry_after_seconds

from .emu_helpers import read_png


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (time, admitted?) for rate 2/s, capacity 2, starting full at t=0
        ([0.0, 0.0, 0.0], [True, True, False]),
        ([0.0, 0.0, 0.5, 0.5], [True, True, True, False]),
        ([0.0, 0.0, 0.0, 10.0, 10.0, 10.0], [True, True, False, True, True, False]),
        ([0.0, 0.0, 0.49], [True, True, False]),
    ],
)
def test_token_bucket_admits(steps: list[float], expected: list[bool]) -> None:
    bucket = TokenBucket(rate=2.0, capacity=2.0, now=0.0)
    assert [bucket.take(t) == 0.0 for t in steps] == expected


def test_token_bucket_driven_far_past_its_rate_admits_the_burst_and_then_exactly_the_rate() -> None:
    bucket = TokenBucket(rate=40.0, capacity=5.0, now=0.0)
    asks = [i / 1000 for i in range(10_000)]  # 1,000 requests a second for 10 seconds
    admitted = [t for t in asks if bucket.take(t) == 0.0]
    assert len(admitted) in (5 + 40 * 10, 5 + 40 * 10 - 1)  # the last token may fall due on the last ask's edge
    assert sum(1 for t in admitted if t < 1.0) <= 5 + 40


def test_token_bucket_wait_is_the_time_to_the_next_token() -> None:
    bucket = TokenBucket(rate=4.0, capacity=1.0, now=100.0)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == pytest.approx(0.25)
    assert bucket.take(100.125) == pytest.approx(0.125)
    assert bucket.take(99.0) > 0  # a clock read that is a little stale does not refill


@pytest.mark.parametrize(("wait", "seconds"), [(0.01, 1), (1.0, 1), (1.01, 2), (29.5, 30)])
def test_retry_after_rounds_up(wait: float, seconds: int) -> None:
    assert retry_after_seconds(wait) == seconds


@pytest.mark.parametrize(("width", "height"), [(1, 1), (3, 5), (1024, 1024), (333, 17), (12288, 1536)])
def test_encoded_png_is_valid_at_any_size(width: int, height: int) -> None:
    png = read_png(encode_png("a prompt", width, height))
    assert (png.width, png.height, png.bit_depth, png.colour_type) == (width, height, 2, 3)
    assert len(png.palette) == 12


def test_png_depends_only_on_the_prompt_and_size() -> None:
    assert encode_png("x", 64, 64) == encode_png("x", 64, 64)
    assert encode_png("x", 64, 64) != encode_png("y", 64, 64)
    assert encode_png("x", 64, 64) != encode_png("x", 64, 68)


def test_image_cache_is_an_lru_bounded_by_entries_and_bytes() -> None:
    cache = ImageCache(max_entries=2)
    first = cache.png("a", 16, 16)
    assert cache.png("a", 16, 16) is first  # cached, not re-encoded
    cache.png("b", 16, 16)
    cache.png("a", 16, 16)  # touch a: b is now the oldest
    cache.png("c", 16, 16)
    assert len(cache) == 2 and cache.png("a", 16, 16) is first
    tiny = ImageCache(max_bytes=1)
    tiny.png("a", 16, 16)
    assert len(tiny) == 0  # larger than the whole budget: served, not kept


def test_config_rejects_bad_knobs() -> None:
    for knobs in ({"fail_rate": 1.5}, {"burst": 0.5}, {"variant": "beta"}, {"fault_kinds": ["upload"]}):
        with pytest.raises(ValueError):
            EmulatorConfig().replace(**knobs)
    with pytest.raises(ValueError, match="unknown knob"):
        EmulatorConfig().replace(flakiness=1.0)


def test_config_coerces_json_forms() -> None:
    config = EmulatorConfig().replace(latency="uniform:1:2", fault_kinds="create,download", rate_limit=5)
    assert str(config.latency) == "uniform:1:2"
    assert config.fault_kinds == frozenset({"create", "download"})
    assert config.rate_limit == 5.0 and config.bucket_size == 5.0
    assert EmulatorConfig(rate_limit=0.5).bucket_size == 1.0


def test_emulator_imports_nothing_else_of_batcher() -> None:
    package = Path(batcher.emulator.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name == "batcher" or name.startswith("batcher."):
                    assert name.startswith("batcher.emulator"), f"{source.name} imports {name}"
