"""`batcher status` at 80 columns: every header and figure whole, nothing cut."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from rich.console import Console

from batcher import views

STATUSES = ("pending", "submitting", "submitted", "unknown", "succeeded", "failed", "retired")


def shown(monkeypatch: pytest.MonkeyPatch, counts: dict[str, dict[str, int]], width: int = 80,
          workers: list[dict[str, Any]] | None = None, shards: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    out = io.StringIO()
    monkeypatch.setattr(views, "stdout", Console(file=out, width=width, soft_wrap=True, color_system=None))
    views.status_table(counts, workers or [], shards or [])
    return out.getvalue()


def test_every_status_of_a_long_job_name_is_readable_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"spring-catalogue-2026": {s: 1000 * (i + 1) for i, s in enumerate(STATUSES)},
              "tiny": {"pending": 3, "succeeded": 12}}  # fmt: skip
    text = shown(monkeypatch, counts)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for status in STATUSES:
        assert status in text, text
    assert "spring-catalogue-2026" in text and "28000" in text and "7000" in text, text  # the total, a figure


def test_a_narrow_table_still_shows_each_job_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    text = shown(monkeypatch, {"a": {"pending": 2, "succeeded": 5}, "b": {"failed": 1}})
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    assert "pending" in text and "succeeded" in text and "failed" in text, text


def test_workers_and_batch_shards_are_readable_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = [
        {
            "id": "render-host-07.example.internal-48213-3fa9c1",
            "host": "render-host-07.example.internal",
            "pid": 48213,
            "jobs": "spring-catalogue-2026",
            "heartbeat_at": time.time(),
            "holds": 256,
        }
    ]
    shards = [{"job": "spring-catalogue-2026", "display_name": "spring-catalogue-2026-shard-0001",
               "state": "JOB_STATE_RUNNING", "requests": 20000, "remote_name": "batches/a1b2c3d4e5f6g7h8i9j0",
               "detail": json.dumps({"requests": 20000, "succeeded": 1500, "failed": 3})}]  # fmt: skip
    text = shown(monkeypatch, {"spring-catalogue-2026": {"pending": 3}}, workers=workers, shards=shards)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    for whole in ("render-host-07.example.internal-48213-3fa9c1", "holds 256", "JOB_STATE_RUNNING",
                  "batches/a1b2c3d4e5f6g7h8i9j0", "1503 of 20000"):  # fmt: skip
        assert whole in text, text
