"""Hostile file URLs against the real runner: each is rejected (or its name ignored), recorded with the cost the
generation was billed, and nothing is ever written outside the output directory or left behind as a .part file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from batcher.config import ApiSettings
from batcher.emulator import Emulator, Latency
from batcher.emulator.app import HOSTILE_NAME
from batcher.imageinfo import sniff
from batcher.runner import StopReason
from batcher.store import Store
from tests.conftest import OpenStore, StartEmulator
from tests.integration.runner_kit import PRICE, drive, fast_config, load, specs

FAST = Latency("uniform", 0.05, 0.2)
TASKS = 12
MB = 2**20

# kind -> what the task's recorded error must say
REJECTED = {
    "scheme": "refused a file URL with scheme",
    "huge": "not an image",
    "not-image": "did not serve an image",
}


def hostile_prompts(emu: Emulator) -> dict[str, str]:
    """prompt -> hostile kind, from the emulator's own book."""
    return {t.request.prompt: t.hostile for t in emu.state.book.tasks.values() if t.hostile is not None}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


async def finish_with(store: Store, emu: Emulator, tmp_path: Path, api: ApiSettings) -> list[dict[str, object]]:
    out = tmp_path / "work" / "out"
    await load(store, specs(TASKS), out)
    escaped = (out / HOSTILE_NAME).resolve()
    before = escaped.stat().st_mtime_ns if escaped.exists() else None
    result = await drive(store, emu, fast_config(max_in_flight=6, api=api))
    assert result.reason == StopReason.DONE, result
    job = await store.job("job")
    rows = [dict(r) async for r in store.task_rows(job)]
    hostile = hostile_prompts(emu)
    assert hostile and len(hostile) < TASKS, "the seed should make some tasks hostile and some not"
    # nothing outside the output directory: not where the URL's name points, not beside the store
    assert (escaped.stat().st_mtime_ns if escaped.exists() else None) == before
    written = files_under(tmp_path / "work")
    assert written == {Path(str(r["output_path"])) for r in rows if r["status"] == "succeeded"}
    assert all(out.resolve() in p.resolve().parents for p in written)
    assert not [p for p in files_under(tmp_path) if p.name.endswith(".part")]
    # every generation reached Success and was billed by the API, so every one is billed in the ledger
    ledger = await store.ledger(job)
    stats = emu.stats
    assert stats.successes == stats.creates_accepted == TASKS
    assert ledger.billed_calls == TASKS and ledger.cost_micros == TASKS * PRICE
    assert all(r["cost_micros"] == PRICE for r in rows)
    for r in rows:
        if r["status"] == "succeeded":
            data = Path(str(r["output_path"])).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r["sha256"] and sniff(data) is not None
    return rows


@pytest.mark.parametrize("kind", REJECTED)
async def test_a_hostile_file_is_rejected_and_recorded(open_store: OpenStore, start_emu: StartEmulator,
                                                       tmp_path: Path, kind: str) -> None:  # fmt: skip
    emu = await start_emu(latency=FAST, seed=11, hostile_file_rate=0.4, hostile_file_kind=kind,
                          hostile_huge_bytes=64 * MB)  # fmt: skip
    rows = await finish_with(await open_store(), emu, tmp_path, ApiSettings(max_image_bytes=MB))
    hostile = hostile_prompts(emu)
    for r in rows:
        if r["prompt"] in hostile:
            assert r["status"] == "failed" and r["output_path"] is None, r
            assert REJECTED[kind] in str(r["last_error"]), r["last_error"]
            assert r["attempts"] == 1 and r["gen_failures"] == 0  # refused once, never created again
        else:
            assert r["status"] == "succeeded", r
    if kind == "huge":  # the client hung up near its cap instead of taking all 64 MiB
        assert emu.stats.hostile_downloads == len(hostile)


async def test_huge_download_under_the_default_cap(open_store: OpenStore, start_emu: StartEmulator,
                                                   tmp_path: Path) -> None:  # fmt: skip
    # the emulator's default: a gibibyte, streamed; the client's default cap stops it long before
    emu = await start_emu(latency=FAST, seed=11, hostile_file_rate=0.2, hostile_file_kind="huge")
    rows = await finish_with(await open_store(), emu, tmp_path, ApiSettings())
    assert {r["status"] for r in rows} == {"succeeded", "failed"}


async def test_a_traversal_name_is_never_used_as_a_path(open_store: OpenStore, start_emu: StartEmulator,
                                                        tmp_path: Path) -> None:  # fmt: skip
    emu = await start_emu(latency=FAST, seed=11, hostile_file_rate=0.4, hostile_file_kind="traversal")
    rows = await finish_with(await open_store(), emu, tmp_path, ApiSettings())
    out = (tmp_path / "work" / "out").resolve()
    # the file is real, so the task succeeds, under the manifest's name and nowhere else
    for r in rows:
        assert r["status"] == "succeeded", r
        assert Path(str(r["output_path"])) == out / f"prompt-{str(r['prompt']).split()[-1]}.png"
    assert os.listdir(out.parent) == ["out"]
