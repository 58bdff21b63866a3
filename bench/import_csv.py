"""Import figures for the foundation issue: a 1,000,000-row CSV into a fresh SQLite store, and `batcher status`.

Targets: import <= 30 s and peak RSS <= 300 MB on the 2-core CI machine; status < 1 s.
Runs the real CLI in subprocesses; prints the median of --repeat runs.

    .venv/bin/python bench/import_csv.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchkit import sample

SIZES = ("1x1", "16x9", "9x16", "4x5", "3x4")
COLORS = ("red", "green", "navy blue", "sand", "charcoal", "ivory")


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sku", "prompt", "size", "color"])
        for i in range(rows):
            color = COLORS[i % len(COLORS)]
            w.writerow([f"SKU-{i:07d}", f"Studio photo of product {i}, {color}, on white", SIZES[i % 5], color])


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of one command."""
    run = sample(cmd)
    if run.code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({run.code}):\n{run.err}")
    return run.wall_s, run.peak_mb, run.out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    batcher = [sys.executable, "-m", "batcher.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "catalog.csv"
        write_csv(manifest, args.rows)
        print(f"CSV: {args.rows:,} rows, {manifest.stat().st_size / 2**20:.0f} MB; machine: {os.cpu_count()} cores")
        imports, peaks, statuses, reimports = [], [], [], []
        for i in range(args.repeat):
            db = Path(tmp) / f"b{i}.db"
            wall, peak, out = measured([*batcher, "import", str(manifest), "--db", str(db)])
            imports.append(wall)
            peaks.append(peak)
            print(f"run {i + 1}: import {wall:.1f} s, peak RSS {peak:.0f} MB ({out})")
            wall, _, _ = measured([*batcher, "import", str(manifest), "--db", str(db)])
            reimports.append(wall)
            wall, _, _ = measured([*batcher, "status", "--db", str(db)])
            statuses.append(wall)
    print()
    print(f"import of {args.rows:,} rows: median {statistics.median(imports):.1f} s (target <= 30 s)")
    print(f"peak RSS during import: median {statistics.median(peaks):.0f} MB (target <= 300 MB)")
    print(f"re-import of the same CSV (adds nothing): median {statistics.median(reimports):.1f} s")
    print(f"batcher status on that store: median {statistics.median(statuses):.2f} s (target < 1 s, "
          "process start included)")  # fmt: skip


if __name__ == "__main__":
    main()
