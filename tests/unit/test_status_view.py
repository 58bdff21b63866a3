"""`batcher status` at 80 columns: every header and figure whole, nothing cut."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from batcher import views

STATUSES = ("pending", "submitting", "submitted", "unknown", "succeeded", "failed", "retired")


def shown(monkeypatch: pytest.MonkeyPatch, counts: dict[str, dict[str, int]], width: int = 80) -> str:
    out = io.StringIO()
    monkeypatch.setattr(views, "stdout", Console(file=out, width=width, soft_wrap=True, color_system=None))
    views.status_table(counts, [])
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
