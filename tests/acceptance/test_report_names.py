"""`batcher report` names each task as a person does: by its manifest `name:`, else its output file, else its
manifest line; and shows the prompt, shortened in the terminal's table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from batcher.report import label
from tests.acceptance.cli_kit import batcher, cli_env

LONG = "Studio shot of a red ceramic mug on a white background, soft shadows, morning light from the left"


async def test_every_view_names_the_tasks_and_calls_per_image_is_a_dash_before_any_image(tmp_path: Path) -> None:
    m = tmp_path / "names.yaml"
    m.write_text(
        "job: names\n"
        "output: {dir: out, filename: '{sku}.png'}\n"
        "tasks:\n"
        f"  - {{name: hero-mug, prompt: '{LONG}', sku: A-1}}\n"  # line 4
        "  - {prompt: A fox sticker, sku: B-2}\n",
        encoding="utf-8",
    )
    db = str(tmp_path / "b.db")
    imported = await batcher("import", str(m), "--db", db, env=cli_env(None), cwd=tmp_path)
    assert imported.code == 0, imported.err

    table = await batcher("report", "names", "--db", db, env=cli_env(None, COLUMNS="200"), cwd=tmp_path)
    assert table.code == 0, table.err
    lines = [line for line in table.out.splitlines() if line.startswith("│")]
    assert len(lines) == 2
    assert "hero-mug" in lines[0] and "Studio shot of a red ceramic mug on a white bac…" in lines[0]
    assert LONG not in table.out  # shortened, on one line
    assert "B-2.png" in lines[1] and "A fox sticker" in lines[1]
    assert "calls per image –" in table.err and "None" not in table.out + table.err

    as_json = await batcher("report", "names", "--db", db, "--format", "json", env=cli_env(None), cwd=tmp_path)
    doc = json.loads(as_json.out)
    assert [(t["task"], t["name"], t["prompt"]) for t in doc["tasks"]] == [
        ("hero-mug", "hero-mug", LONG), ("B-2.png", None, "A fox sticker"),
    ]  # fmt: skip
    assert doc["summary"]["calls_per_image"] is None  # JSON keeps "no figure" as null

    as_csv = await batcher("report", "names", "--db", db, "--format", "csv", env=cli_env(None), cwd=tmp_path)
    assert [(r["task"], r["source"]) for r in csv.DictReader(io.StringIO(as_csv.out))] == [
        ("hero-mug", f"{m}:4"), ("B-2.png", f"{m}:5"),
    ]  # fmt: skip

    page = tmp_path / "report.html"
    html = await batcher("report", "names", "--db", db, "--format", "html", "-o", str(page), env=cli_env(None),
                         cwd=tmp_path)  # fmt: skip
    assert html.code == 0, html.err
    text = page.read_text(encoding="utf-8")
    assert '<p class="name" title="hero-mug">hero-mug</p>' in text and '<p class="name" title="B-2.png">' in text
    assert 'data-stat="calls-per-image" title="no API calls"><b>–</b>' in text and "None" not in text


def test_a_task_without_a_name_or_a_file_is_named_by_its_manifest_line() -> None:
    assert label({"name": None, "filename": "", "source": "m.yaml:3"}) == "m.yaml:3"
    assert label({"name": "", "filename": "a.png", "source": "m.yaml:3"}) == "a.png"
