"""Filename templates name files after any short task field: `{name}`, `{from}`, `{variant}` (the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.cli_kit import batcher, cli_env

EMULATE = ("--emulate", "--emulate-latency", "fixed:0.05", "-q")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_files_are_named_after_the_tasks_names(tmp_path: Path) -> None:
    (tmp_path / "named.yaml").write_text(
        "job: named\n"
        'output: {dir: out, filename: "{name}.png"}\n'
        "tasks:\n"
        "  - {name: mug-base, prompt: A plain white mug}\n"
        "  - {name: mug-blue, from: mug-base, prompt: Make the mug blue}\n"
        '  - {name: "cat/sitting", prompt: A sitting cat}\n'  # a separator in a value never adds a folder
        "matrix:\n"
        "  name: 'pose-{pose}'\n"
        "  from: mug-base\n"
        '  filename: "{from}-{name}-{variant}.png"\n'
        '  prompt: "The mug, {pose}"\n'
        "  variant: v1\n"
        "  pose: [left, right]\n",
        encoding="utf-8",
    )
    done = await batcher("run", "named.yaml", "--db", "b.db", *EMULATE, "--json", env=cli_env(None), cwd=tmp_path)
    assert done.code == 0, done.err
    assert json.loads(done.out)["succeeded"] == 5
    assert _files(tmp_path / "out") == [
        "cat_sitting.png", "mug-base-pose-left-v1.png", "mug-base-pose-right-v1.png", "mug-base.png", "mug-blue.png",
    ]  # fmt: skip


async def test_a_csv_name_column_keeps_naming_files(tmp_path: Path) -> None:
    # in a CSV, `name` is a column like any other (a product's name): `{name}` there is the column
    (tmp_path / "products.csv").write_text("name,color\nmug,red\ntote,blue\n", encoding="utf-8")
    (tmp_path / "rows.yaml").write_text(
        'job: rows\noutput: {dir: out, filename: "{name}-{color}.png"}\n'
        'rows: {file: products.csv, prompt: "A {color} {name}"}\n',
        encoding="utf-8",
    )
    done = await batcher("run", "rows.yaml", "--db", "b.db", *EMULATE, env=cli_env(None), cwd=tmp_path)
    assert done.code == 0, done.err
    assert _files(tmp_path / "out") == ["mug-red.png", "tote-blue.png"]


async def test_an_undefined_variable_names_file_line_and_what_is_available(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text(
        "job: typo\ntasks:\n  - name: mug\n    prompt: A mug\n    slug: mug-1\n    filename: '{nmae}-{slug}.png'\n",
        encoding="utf-8",
    )
    done = await batcher("run", "typo.yaml", "--db", "b.db", *EMULATE, env=cli_env(None), cwd=tmp_path)
    assert done.code == 2
    assert (
        "typo.yaml:6:15: undefined variable 'nmae' in filename template '{nmae}-{slug}.png' (did you mean 'name'?); "
        "variables: slug; built-ins: from, index, key, model, name, quality, seed, size, variant"
    ) in done.err
    assert _files(tmp_path) == ["typo.yaml"]  # nothing written


async def test_a_task_without_a_name_cannot_be_named_after_it(tmp_path: Path) -> None:
    (tmp_path / "nameless.yaml").write_text(
        "job: nameless\noutput: {filename: '{name}.png'}\ntasks:\n  - {name: a, prompt: One}\n  - {prompt: Two}\n",
        encoding="utf-8",
    )
    done = await batcher("run", "nameless.yaml", "--db", "b.db", *EMULATE, env=cli_env(None), cwd=tmp_path)
    assert done.code == 2
    assert "nameless.yaml:5:5: filename template '{name}.png' uses {name}, but the task has no name" in done.err
    assert _files(tmp_path) == ["nameless.yaml"]
