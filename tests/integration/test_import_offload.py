"""A large manifest is expanded in a child process: the same tasks, the same problems, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from batcher import session
from batcher.errors import BatcherError, ManifestError
from batcher.manifest import load_manifest, offload
from batcher.store import Store
from batcher.store.tables import tasks


def catalog(tmp_path: Path, rows: int, bad: dict[int, str] | None = None) -> Path:
    path = tmp_path / "catalog.csv"
    lines = ["sku,prompt,size"]
    for i in range(rows):
        lines.append(f"S{i},Photo of product {i % 900},{(bad or {}).get(i, '1x1')}")  # 900 prompts: duplicates
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def stored(db: Path) -> list[tuple[str, int, str, str]]:
    store = await Store.open(str(db))
    try:
        rows = await store._rows(
            select(tasks.c.key, tasks.c.seq, tasks.c.filename, tasks.c.source).order_by(tasks.c.seq)
        )
        return [tuple(r) for r in rows]
    finally:
        await store.close()


@pytest.fixture
def offloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "OFFLOAD_FROM_BYTES", 0)


async def test_the_child_imports_exactly_what_this_process_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = catalog(tmp_path, 12_000)  # more than two batches
    here = await session.import_only(str(manifest), str(tmp_path / "here.db"), None)
    monkeypatch.setattr(offload, "OFFLOAD_FROM_BYTES", 0)
    there = await session.import_only(str(manifest), str(tmp_path / "there.db"), None)
    assert (there.rows, there.added) == (here.rows, here.added) == (12_000, 900)
    assert await stored(tmp_path / "there.db") == await stored(tmp_path / "here.db")


async def test_problems_found_by_the_child_are_reported_with_their_lines_and_nothing_is_written(
    tmp_path: Path, offloaded: None
) -> None:
    manifest = catalog(tmp_path, 12_000, bad={3: "7x7", 11_000: "2x9"})  # one in the first batch, one in the last
    with pytest.raises(ManifestError) as caught:
        await session.import_only(str(manifest), str(tmp_path / "b.db"), None)
    assert [(p.line, "7x7" in p.message or "2x9" in p.message) for p in caught.value.problems] == [
        (5, True),
        (11_002, True),
    ]
    store = await Store.open(str(tmp_path / "b.db"))
    try:
        assert await store.jobs() == []
        assert await store.status_counts() == {}
    finally:
        await store.close()


def test_a_manifest_gone_before_the_child_reads_it_is_reported(tmp_path: Path, offloaded: None) -> None:
    manifest = load_manifest(catalog(tmp_path, 10))
    manifest.path.unlink()  # the child cannot read what the parent loaded
    with pytest.raises(BatcherError) as caught:
        list(offload.import_rows(manifest))
    assert "catalog.csv" in caught.value.message


def test_a_reader_that_dies_is_an_error_not_a_hang(
    tmp_path: Path, offloaded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dying = tmp_path / "dying-python"
    dying.write_text("#!/bin/sh\nprintf 'not a pickle'\nexit 3\n")
    dying.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(dying))
    with pytest.raises(BatcherError) as caught:
        list(offload.import_rows(load_manifest(catalog(tmp_path, 10))))
    assert "reader stopped (exit code 3)" in caught.value.message


def test_the_child_does_not_get_the_api_key(tmp_path: Path, offloaded: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKMODEL_API_KEY", "sk-secret")
    seen: list[dict[str, str]] = []
    real = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["env"])
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    assert sum(len(b) for b in offload.import_rows(load_manifest(catalog(tmp_path, 10)))) == 10
    assert len(seen) == 1 and "LINKMODEL_API_KEY" not in seen[0] and seen[0]["PATH"] == os.environ["PATH"]
