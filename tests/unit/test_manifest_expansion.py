"""`matrix:` expands to the cartesian product of its lists; `rows:` turns each CSV row into a task."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.models import TaskSpec

GOOD = Path(__file__).resolve().parents[1] / "manifests" / "good"


def specs_of(tmp_path: Path, text: str, name: str = "job.yaml") -> list[TaskSpec]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return list(load_manifest(path).specs())


def test_matrix_is_the_cartesian_product_last_list_fastest(tmp_path: Path) -> None:
    specs = specs_of(
        tmp_path,
        "matrix: {prompt: 'Sticker of a {animal}, {style} style', size: [1x1, 9x16], animal: [cat, dog], "
        "style: [flat, 3d]}\n",
    )
    assert [(s.size, s.variables["animal"], s.variables["style"]) for s in specs] == [
        (size, animal, style) for size in ("1x1", "9x16") for animal in ("cat", "dog") for style in ("flat", "3d")
    ]
    assert specs[0].prompt == "Sticker of a cat, flat style"
    assert specs[0].variables == {"animal": "cat", "style": "flat"}  # size is a field, not a variable


def test_matrix_scalars_are_constants_and_a_list_of_matrices_is_allowed(tmp_path: Path) -> None:
    specs = specs_of(
        tmp_path,
        "matrix:\n"
        "  - {prompt: 'A {animal} on {ground}', animal: [cat, dog], ground: grass}\n"
        "  - {prompt: 'A {animal}', animal: owl}\n",
    )
    assert [s.prompt for s in specs] == ["A cat on grass", "A dog on grass", "A owl"]


def test_matrix_field_lists_set_the_field(tmp_path: Path) -> None:
    specs = specs_of(
        tmp_path,
        "matrix:\n  prompt: A lighthouse\n  model: [gemini-3.1-flash-image]\n  quality: [0.5K, 4K]\n  seed: [1, 2]\n",
    )
    assert [(s.model, s.quality, s.seed) for s in specs] == [
        ("gemini-3.1-flash-image", q, seed) for q in ("0.5K", "4K") for seed in ("1", "2")
    ]
    assert len({s.key for s in specs}) == 4


def test_matrix_prompt_list_is_an_axis(tmp_path: Path) -> None:
    specs = specs_of(tmp_path, "matrix: {prompt: ['A {animal}', 'Two {animal}s'], animal: [cat, dog]}\n")
    assert [s.prompt for s in specs] == ["A cat", "A dog", "Two cats", "Two dogs"]


def test_matrix_images_are_shared_or_an_axis_of_lists(tmp_path: Path) -> None:
    shared = specs_of(tmp_path, "matrix: {prompt: 'Make it {c}', c: [red, blue], images: [https://e.com/a.png]}\n")
    assert [s.images for s in shared] == [("https://e.com/a.png",)] * 2
    axis = specs_of(tmp_path, "matrix: {prompt: Make it red, images: [[https://e.com/a.png], [https://e.com/b.png]]}\n")
    assert [s.images for s in axis] == [("https://e.com/a.png",), ("https://e.com/b.png",)]


def test_matrix_checks_every_model_quality_pair(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        specs_of(
            tmp_path, "matrix: {prompt: x, model: [gemini-3.1-flash-image, gemini-2.5-flash-image], quality: 2K}\n"
        )
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (1, 87)  # the 2K: both values are the matrix's own
    assert problem.message == "quality 2K is not available for gemini-2.5-flash-image, which only accepts 1K"


def test_a_huge_matrix_is_refused_at_load(tmp_path: Path) -> None:
    values = "[" + ", ".join(str(i) for i in range(101)) + "]"
    with pytest.raises(ManifestError, match="the matrix expands to 1,030,301 tasks, more than 1,000,000"):
        specs_of(tmp_path, f"matrix: {{prompt: '{{a}}{{b}}{{c}}', a: {values}, b: {values}, c: {values}}}\n")


def test_rows_file_name_with_the_job_prompt(tmp_path: Path) -> None:
    (tmp_path / "products.csv").write_text("sku,name,color\nA-1,mug,red\nA-2,tote,navy\n", encoding="utf-8")
    specs = specs_of(tmp_path, "prompt: 'Studio photo of a {color} {name}'\nrows: products.csv\n")
    assert [s.prompt for s in specs] == ["Studio photo of a red mug", "Studio photo of a navy tote"]
    assert specs[0].variables == {"sku": "A-1", "name": "mug", "color": "red"}
    assert [s.source for s in specs] == [f"{tmp_path / 'products.csv'}:2", f"{tmp_path / 'products.csv'}:3"]


def test_rows_mapping_sets_prompt_defaults_and_constants(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.csv").write_text("sku,color,size,prompt\nA-1,red,,\nA-2,navy,16x9,Own prompt\n")
    specs = specs_of(
        tmp_path,
        "rows:\n"
        "  file: data/p.csv\n"
        "  prompt: 'A {color} {item}'\n"
        "  filename: '{sku}.png'\n"
        "  size: 4x5\n"
        "  item: scarf\n",
    )
    assert [(s.prompt, s.size, s.filename) for s in specs] == [
        ("A red scarf", "4x5", "A-1.png"),  # empty cells fall back to the rows defaults
        ("Own prompt", "16x9", "A-2.png"),  # filled cells of prompt/size/... columns override them
    ]
    assert specs[0].variables == {"item": "scarf", "sku": "A-1", "color": "red"}


def test_rows_may_be_a_list_and_delimiter_may_be_set(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("prompt\nfrom a\n")
    (tmp_path / "b.txt").write_text("prompt|sku\nfrom b|B-1\n")
    specs = specs_of(tmp_path, "rows: [a.csv, {file: b.txt, delimiter: '|'}]\n")
    assert [(s.prompt, s.variables) for s in specs] == [("from a", {}), ("from b", {"sku": "B-1"})]


def test_rows_paths_are_relative_to_the_manifest_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "p.csv").write_text("prompt\na mug\n")
    (tmp_path / "jobs" / "j.yaml").write_text("rows: p.csv\n")
    monkeypatch.chdir(tmp_path)
    (spec,) = load_manifest("jobs/j.yaml").specs()
    assert spec.source == "jobs/p.csv:2"


def test_index_counts_across_all_sources(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("prompt\nr1\nr2\n")
    specs = specs_of(
        tmp_path, "output: {filename: '{index}.png'}\ntasks: [t1]\nmatrix: {prompt: 'm{n}', n: [1, 2]}\nrows: r.csv\n"
    )
    assert [(s.prompt, s.filename) for s in specs] == [
        ("t1", "1.png"), ("m1", "2.png"), ("m2", "3.png"), ("r1", "4.png"), ("r2", "5.png"),
    ]  # fmt: skip


def test_everything_at_once() -> None:
    specs = list(load_manifest(GOOD / "everything.yaml").specs())
    assert len(specs) == 2 + 8 + 6 + 2
    assert specs[0].name == "red-mug"
    assert [s.name for s in specs[2:4]] == ["sticker-cat-flat-1x1", "sticker-cat-3d-1x1"]
    assert specs[1].quality == "1K" and specs[1].model == "gemini-3.1-flash-lite-image"
    assert [s.prompt for s in specs[-2:]] == ["Studio photo of a red scarf", "Studio photo of a navy scarf"]
    assert [s.filename[:4] for s in specs[:3]] == ["001-", "002-", "003-"]
