"""``batcher emulator --provider vertex``: the real CLI in a subprocess, and option checks through click."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from google.oauth2 import service_account

import batcher.emulator
from batcher.emulator.command import emulator

from .gemini_helpers import image_request
from .vertex_helpers import CLOUD_PLATFORM, fetch_token

REPO = Path(batcher.emulator.__file__).resolve().parents[2]
READY = re.compile(
    r"^emulator ready base_url=(http://127\.0\.0\.1:\d+) api_key=(\S+) provider=vertex project=(\S+) key_file=(\S+)$"
)
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


async def test_serves_vertex_with_a_key_file_until_signalled(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    key_file = tmp_path / "key.json"
    args = ["--provider", "vertex", "--port", "0", "--project", "acme=42", "--dsq-429-rate", "1"]
    args += ["--key-file", str(key_file), "--token-lifetime-s", "900"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batcher.emulator", *args, stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode().strip()
        found = READY.match(line)
        assert found, line
        origin, _, project, written = found.groups()
        assert project == "acme" and written == str(key_file)
        assert key_file.stat().st_mode & 0o077 == 0  # a private key: its owner's alone
        creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
        assert creds._token_uri == f"{origin}/token"
        token = await fetch_token(creds)
        url = f"{origin}/v1/projects/42/locations/global/publishers/google/models/gemini-3.1-flash-lite-image:generateContent"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            async with session.post(url, json=image_request()) as resp:
                assert resp.status == 429  # --dsq-429-rate 1
            async with session.get(f"{origin}/_emulator/stats") as resp:
                stats = await resp.json()
        assert stats["tokens_issued"] == 1 and stats["dsq_429s"] == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "vertex", "--fail-rate", "1"], "not a Vertex knob: --fail-rate"),
        (["--provider", "vertex", "--daily-limit", "3"], "not a Vertex knob: --daily-limit"),
        (["--provider", "gemini", "--dsq-429-rate", "1"], "not a Gemini knob: --dsq-429-rate"),
        (["--batch-output-files", "2"], "only with --provider vertex: --batch-output-files"),
        (["--provider", "vertex", "--project", "nonumber"], "expected ID=NUMBER"),
        (["--provider", "vertex", "--project", "p=abc"], "project numbers"),
    ],
)
def test_options_of_other_providers_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(emulator, args)
    assert result.exit_code == 2 and message in result.output, result.output
