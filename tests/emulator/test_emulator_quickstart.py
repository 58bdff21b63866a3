"""The provider guide's Python quick start, run verbatim against the emulator over real HTTP.

GUIDE_QUICK_START is the guide's code as printed (blank lines stripped of trailing spaces). The test changes
only its constants: the API key, the base URL and the poll interval (so it takes a second, not a minute).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from batcher.emulator import BackgroundEmulator

from .emu_helpers import read_png

GUIDE_QUICK_START = """\
import time
import requests

API_KEY = "YOUR_API_KEY"
BASE = "https://api.linkmodel.ai/api/v1"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

# Step 1: create the task
create = requests.post(
    f"{BASE}/image-generation",
    headers=HEADERS,
    json={
        "model": "gemini-3.1-flash-lite-image",
        "prompt": (
            "A cinematic close-up of a glowing banana on a matte black stage, "
            "warm studio lighting"
        ),
        "quality": "1K",
        "size": "16x9",
    },
).json()

if create["code"] != 0:
    raise RuntimeError(f"create failed: {create['msg']}")

task_id = create["data"]["task_id"]

# Step 2: poll until status = "Success"
while True:
    time.sleep(3)
    poll = requests.get(
        f"{BASE}/query/image-generation",
        headers={"Authorization": f"Bearer {API_KEY}"},
        params={"task_id": task_id},
    ).json()
    status = poll["data"]["status"]
    if status == "Success":
        image_url = poll["data"]["file_url"]
        print(image_url)
        break
    if status == "Failed":
        raise RuntimeError(f"generation failed: {poll['msg']}")
"""
POLL_S = 0.1  # the guide sleeps 3 s between polls
GENERATION_S = 600.0  # the emulator's generation time: it passes only when the test advances the clock
WAIT_S = 30.0  # a bound on waits for the guide's thread (never reached when the code is right), seconds


def with_constants(api_key: str, base: str) -> str:
    """The guide's code with its three constants changed, and nothing else."""
    code = GUIDE_QUICK_START
    for old, new in (
        ('API_KEY = "YOUR_API_KEY"', f"API_KEY = {api_key!r}"),
        ('BASE = "https://api.linkmodel.ai/api/v1"', f"BASE = {base!r}"),
        ("time.sleep(3)", f"time.sleep({POLL_S})"),
    ):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    return code


def run_guide(api_key: str, base: str) -> tuple[dict[str, object], str]:
    """Execute the guide's script; returns its globals and what it printed."""
    namespace: dict[str, object] = {"__name__": "guide_quick_start"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(with_constants(api_key, base), "guide_quick_start.py", "exec"), namespace)
    return namespace, printed.getvalue()


@pytest.fixture
def background() -> Iterator[BackgroundEmulator]:
    with BackgroundEmulator(latency="fixed:0.2") as emu:
        yield emu


def test_the_guides_quick_start_works_against_the_emulator() -> None:
    # the generation ends only when the test moves the emulator's clock: the guide's loop is seen polling a
    # running task first, whatever the machine's speed
    with BackgroundEmulator(latency=f"fixed:{GENERATION_S}") as emu:
        found: dict[str, object] = {}

        def follow_the_guide() -> None:
            found["ns"], found["printed"] = run_guide(emu.api_key, emu.base_url)

        guide = threading.Thread(target=follow_the_guide, daemon=True)
        guide.start()
        polls_while_running = wait_for_polls(emu, 2)
        assert guide.is_alive()  # still polling: the task is running
        emu.advance(GENERATION_S)
        guide.join(WAIT_S)
        assert not guide.is_alive()
        stats = emu.stats()
        namespace, printed = found["ns"], found["printed"]
        assert isinstance(namespace, dict) and isinstance(printed, str)
        image_url = namespace["image_url"]
        assert isinstance(image_url, str) and printed.strip() == image_url
        download = requests.get(image_url, timeout=10)
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "image/png"
    png = read_png(download.content)
    assert (png.width, png.height) == (1376, 768)  # 16x9 at 1K on the 3.1 models
    assert stats["creates_accepted"] == 1 and stats["successes"] == 1
    assert stats["polls"] > polls_while_running  # it polled again after the generation ended, and stopped


def wait_for_polls(emu: BackgroundEmulator, count: int) -> int:
    """Wait (bounded) until the emulator has answered `count` polls; returns how many it has."""
    deadline = time.monotonic() + WAIT_S
    while (polls := int(emu.stats()["polls"])) < count:
        assert time.monotonic() < deadline, f"{polls} polls in {WAIT_S} s"
        time.sleep(POLL_S / 10)
    return polls


def test_the_guides_error_branches_report_the_emulators_reasons(background: BackgroundEmulator) -> None:
    background.configure(fail_rate=1.0, fail_reason="content refused")
    with pytest.raises(RuntimeError, match="generation failed: content refused"):
        run_guide(background.api_key, background.base_url)
    with pytest.raises(RuntimeError, match="create failed: invalid API key"):
        run_guide("not-the-key", background.base_url)
