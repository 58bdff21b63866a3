"""CSV tasks stream: memory stays flat however many rows, loading reads only the header, nothing is held."""

from __future__ import annotations

import itertools
import os
import sys
import time
import tracemalloc
from collections.abc import Generator
from pathlib import Path

import pytest

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.manifest.expansion import FilenameTable

ROWS = 200_000
TRACED = 10_000  # the last rows, traced: tracemalloc slows every allocation ~12x, 200k traced rows take 25 s
MAX_PEAK_BYTES = 1 << 20  # 1 MiB; keeping those 10k tasks alone would take ~10 MiB


def big_csv(tmp_path: Path, rows: int = ROWS) -> Path:
    path = tmp_path / "big.csv"
    colors = ("red", "navy", "sage green")
    lines = (f"SKU-{i:07d},Product number {i},{colors[i % 3]}\n" for i in range(rows))
    path.write_text("sku,name,color\n" + "".join(lines), encoding="utf-8")
    return path


def manifest_for(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(
        f"rows: {{file: big.csv, prompt: 'Studio photo of a {{color}} {{name}}'}}\n{extra}", encoding="utf-8"
    )
    return path


def test_a_200k_row_csv_streams_in_constant_memory(tmp_path: Path) -> None:
    big_csv(tmp_path)
    stream = load_manifest(manifest_for(tmp_path)).specs()
    # Anything kept per row (a list of specs, a set of keys) grows in every window of the stream; the last
    # one is the window where a leak would be largest.
    skipped = sum(1 for _ in itertools.islice(stream, ROWS - TRACED))
    tracemalloc.start()
    try:
        specs = 0
        last = None
        for spec in stream:
            specs += 1
            last = spec
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert skipped + specs == ROWS
    assert last is not None and last.source.endswith(f":{ROWS + 1}")
    assert peak < MAX_PEAK_BYTES, f"peak {peak / 2**20:.1f} MiB over the last {TRACED:,} rows"


def test_filenames_without_index_are_remembered_compactly() -> None:
    # Every filename is remembered, to catch two different tasks writing one file: 16 bytes a slot, at
    # most 1/0.3 slots a filename (a dict of Python ints would take ~120 bytes a filename).
    table = FilenameTable()
    key = "0123456789abcdef" * 2
    for task in range(100_000):
        table.claim(f"SKU-{task:07d}.png", key, task)
    size = sum(sys.getsizeof(a) for a in (table._names, table._specs, table._tasks))
    assert size / 100_000 < 16 / 0.3


def test_loading_reads_only_the_header_and_one_row(tmp_path: Path) -> None:
    big_csv(tmp_path)
    started = time.process_time()  # CPU seconds, not the wall clock that a loaded machine stretches
    load_manifest(manifest_for(tmp_path))
    assert time.process_time() - started < 0.5  # seconds: nowhere near reading 200k rows


def test_tasks_are_yielded_before_later_rows_are_read(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"prompt\na red mug\n" + b"x" * 2_000_000)  # a fault far down the file
    stream = load_manifest(path).specs()
    assert next(stream).prompt == "a red mug"
    with pytest.raises(ManifestError, match="line is longer than 1 MiB"):
        next(stream)


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_abandoning_the_stream_closes_the_file(tmp_path: Path) -> None:
    big_csv(tmp_path, 10)
    manifest = load_manifest(manifest_for(tmp_path))
    before = open_files()
    stream = manifest.specs()
    assert isinstance(stream, Generator)  # specs() is a generator: closing it ends the read
    next(stream)
    assert open_files() == before + 1
    stream.close()  # what a consumer's `break` or an exception does
    assert open_files() == before


def test_a_changed_header_between_load_and_stream_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("prompt,sku\na mug,A-1\n", encoding="utf-8")
    manifest = load_manifest(path)
    path.write_text("prompt,colour\na mug,red\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="the file changed while being read"):
        list(manifest.specs())
