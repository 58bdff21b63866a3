"""``batcher emulator --provider gemini``: the real CLI in a subprocess, and option checks through click."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

import batcher.emulator
from batcher.emulator.command import emulator

from .gemini_helpers import image_request

REPO = Path(batcher.emulator.__file__).resolve().parents[2]
READY = re.compile(r"^emulator ready base_url=(http://127\.0\.0\.1:\d+) api_key=(\S+) provider=gemini$")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def serving(*args: str) -> AsyncIterator[tuple[str, str]]:
    """`python -m batcher.emulator --provider gemini --port 0 ARGS`: (origin, key) while it serves; it must stop
    with exit 0 on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "batcher.emulator", "--provider", "gemini",
                                                "--port", "0", *args, stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode().strip()
        found = READY.match(line)
        assert found, line
        origin, key = found.groups()
        yield origin, key
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serves_the_gemini_api_until_signalled() -> None:
    async with serving("--api-key", "g-key", "--refusal-rate", "1", "--daily-limit", "1") as (origin, key):
        assert key == "g-key"
        url = f"{origin}/v1/models/gemini-3.1-flash-lite-image:generateContent"
        async with aiohttp.ClientSession(headers={"x-goog-api-key": key}) as session:
            async with session.post(url, json=image_request()) as resp:
                assert resp.status == 200
                assert (await resp.json())["candidates"][0]["finishReason"] == "IMAGE_SAFETY"  # --refusal-rate 1
            async with session.post(url, json=image_request()) as resp:
                assert resp.status == 429  # --daily-limit 1
            # the administration routes the benchmarks read, as the LinkModel emulator's command serves them
            async with session.get(f"{origin}/_emulator/stats") as resp:
                stats = await resp.json()
                assert stats["requests"] == {"generate": {"200": 1, "429": 1}} and stats["daily_refusals"] == 1
            async with session.post(f"{origin}/_emulator/reset") as resp:
                assert resp.status == 200
            async with session.get(f"{origin}/_emulator/stats") as resp:
                assert (await resp.json())["requests"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "gemini", "--fail-rate", "1"], "not a Gemini knob: --fail-rate"),
        (["--daily-limit", "5"], "only with --provider gemini: --daily-limit"),
        (["--provider", "gemini", "--batch-latency", "nope:1"], "kind must be"),
    ],
)
def test_options_of_the_other_provider_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(emulator, args)
    assert result.exit_code == 2 and message in result.output, result.output


async def test_the_batch_truth_knobs_are_set_from_the_command_line() -> None:
    args = ["--batch-create-gateway-rate", "0.1", "--batch-create-gateway-status", "504",
            "--batch-create-gateway-body", "bare", "--batch-list-lag-s", "6", "--batch-api-latency", "uniform:0.1:0.5",
            "--batch-partial-lines", "true", "--batch-ended-no-file-rate", "0.2", "--batch-omit-line-rate", "0.05",
            "--batch-results-no-final-newline", "true", "--results-gone-rate", "0.1", "--results-gone-status", "404",
            "--file-ttl-s", "3600"]  # fmt: skip
    async with serving(*args) as (origin, _), aiohttp.ClientSession() as session:
        async with session.get(f"{origin}/_emulator/config") as resp:
            config = await resp.json()
    expected = {
        "batch_create_gateway_rate": 0.1,
        "batch_create_gateway_status": 504,
        "batch_create_gateway_body": "bare",
        "batch_list_lag_s": 6.0,
        "batch_api_latency": "uniform:0.1:0.5",
        "batch_partial_lines": True,
        "batch_ended_no_file_rate": 0.2,
        "batch_omit_line_rate": 0.05,
        "batch_results_no_final_newline": True,
        "results_gone_rate": 0.1,
        "results_gone_status": 404,
        "file_ttl_s": 3600.0,
    }
    assert {k: config[k] for k in expected} == expected
