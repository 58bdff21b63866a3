"""The `emulator` command: the real CLI in a subprocess, plus option handling through click."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

import batcher.emulator
from batcher.emulator.command import emulator

REPO = Path(batcher.emulator.__file__).resolve().parents[2]
READY = re.compile(r"^emulator ready base_url=(http://127\.0\.0\.1:\d+/api/v1) api_key=(\S+)$")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_serves_until_signalled_then_exits_0(signum: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batcher.emulator",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--fail-rate",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode().strip()
        found = READY.match(line)
        assert found, line
        base_url, key = found.groups()
        assert key == "cli-key"
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as session:
            body = {"model": "gemini-3.1-flash-lite-image", "prompt": "from the CLI"}
            async with session.post(f"{base_url}/image-generation", json=body, headers=headers) as resp:
                assert resp.status == 200
                task_id = (await resp.json())["data"]["task_id"]
            query = f"{base_url}/query/image-generation"
            async with session.get(query, params={"task_id": task_id}, headers=headers) as resp:
                assert (await resp.json())["data"]["status"] == "Failed"  # --fail-rate 1 took effect
        proc.send_signal(signum)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_help_lists_one_option_per_knob() -> None:
    result = CliRunner().invoke(emulator, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--seed",
        "--latency",
        "--api-key",
        "--variant",
        "--images-field",
        "--fail-rate",
        "--cancel-rate",
        "--error-500-rate",
        "--error-503-rate",
        "--drop-rate",
        "--malformed-rate",
        "--slow-rate",
        "--slow-s",
        "--fault-kinds",
        "--lost-create-rate",
        "--truncate-rate",
        "--url-ttl-s",
        "--rate-limit",
        "--burst",
        "--retry-after-format",
        "--errors-http-200",
        "--price",
        "--no-price",
    ):
        assert option in result.output, option


@pytest.mark.parametrize(
    "args",
    [
        ["--latency", "soon"],
        ["--fail-rate", "1.5"],
        ["--fault-kinds", "create,upload"],
        ["--price", "cheap"],
        ["--variant", "beta"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(emulator, args)
    assert result.exit_code == 2, result.output


def test_a_busy_port_is_one_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(emulator, ["--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
