"""Chains in manifests (`from:`), input images from local files, and seeds: identity and located problems."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from batcher.emulator.images import encode_png
from batcher.errors import ManifestError, Problem
from batcher.manifest import load_manifest
from batcher.models import TaskSpec, from_ref, image_identity, spec_key


def specs_of(tmp_path: Path, text: str, name: str = "job.yaml") -> list[TaskSpec]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return list(load_manifest(path).specs())


def problems_of(tmp_path: Path, text: str, name: str = "job.yaml") -> list[Problem]:
    with pytest.raises(ManifestError) as caught:
        specs_of(tmp_path, text, name)
    return caught.value.problems


def png(path: Path, look: str = "a", size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(look, size, size))
    return path


CHAIN = """\
tasks:
  - {name: sticker, from: blue, prompt: add a sticker}
  - {name: base, prompt: a white mug}
  - {name: blue, from: base, prompt: make it blue}
"""


def test_parents_come_before_children_whatever_the_order(tmp_path: Path) -> None:
    specs = specs_of(tmp_path, CHAIN)
    assert [s.name for s in specs] == ["base", "blue", "sticker"]
    base, blue, sticker = specs
    assert base.images == () and base.parent_key is None
    assert blue.images == (from_ref(base.key),) and blue.parent_key == base.key
    assert sticker.parent_key == blue.key
    assert sticker.filename.startswith("00001-")  # its place in the manifest is kept


def test_a_changed_parent_changes_every_task_downstream(tmp_path: Path) -> None:
    before = {s.name: s.key for s in specs_of(tmp_path, CHAIN)}
    after = {s.name: s.key for s in specs_of(tmp_path, CHAIN.replace("a white mug", "a grey mug"))}
    assert all(before[n] != after[n] for n in ("base", "blue", "sticker"))
    same = {s.name: s.key for s in specs_of(tmp_path, CHAIN.replace("add a sticker", "add a  sticker"))}
    assert same == before  # whitespace is not identity


def test_a_matrix_fans_one_base_out_into_many_edits(tmp_path: Path) -> None:
    specs = specs_of(
        tmp_path,
        "tasks: [{name: fox, prompt: a fox mascot}]\n"
        "matrix: {from: fox, prompt: 'the same fox {pose}', pose: [waving, sitting, jumping]}\n",
    )
    fox, *poses = specs
    assert [s.prompt for s in poses] == ["the same fox waving", "the same fox sitting", "the same fox jumping"]
    assert {s.parent_key for s in poses} == {fox.key}


def test_rows_name_their_parent_by_template_or_column(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("sku,color\nA-1,red\nA-2,blue\n", encoding="utf-8")
    (tmp_path / "e.csv").write_text("prompt,from,sku\nadd a tag,shot-A-2,x\n", encoding="utf-8")
    specs = specs_of(
        tmp_path,
        "rows:\n"
        "  - {file: p.csv, name: 'shot-{sku}', prompt: 'a {color} mug', filename: '{sku}.png'}\n"
        "  - {file: p.csv, from: 'shot-{sku}', prompt: 'the {color} mug on a desk', filename: '{sku}-desk.png'}\n"
        "  - {file: e.csv, filename: '{sku}-tag.png'}\n",
    )
    by_file = {s.filename: s for s in specs}
    assert by_file["A-1-desk.png"].parent_key == by_file["A-1.png"].key
    assert by_file["A-2-desk.png"].parent_key == by_file["A-2.png"].key
    assert by_file["x-tag.png"].parent_key == by_file["A-2.png"].key


def test_a_cycle_is_refused_at_each_from_on_it(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        "tasks:\n"
        "  - {name: a, from: b, prompt: x}\n"
        "  - name: b\n"
        "    from: a\n"
        "    prompt: y\n"
        "  - {name: c, from: a, prompt: z}\n",  # waits behind the cycle: its cause is reported, not it
    )
    assert [(p.line, p.column) for p in problems] == [(2, 21), (4, 11)]
    assert "from: 'b' makes a cycle ('a' → 'b' → 'a')" in problems[0].message
    assert "from: 'a' makes a cycle ('b' → 'a' → 'b')" in problems[1].message


def test_a_task_cannot_take_its_own_output(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "tasks:\n  - {name: me, from: me, prompt: x}\n")
    assert (problem.line, problem.column) == (2, 22)
    assert "makes a cycle ('me' → 'me')" in problem.message


def test_a_missing_name_is_refused_where_from_is_written(tmp_path: Path) -> None:
    (problem,) = problems_of(
        tmp_path, "tasks:\n  - {name: base, prompt: a mug}\n  - prompt: make it blue\n    from: bsae\n"
    )
    assert (problem.line, problem.column) == (4, 11)
    assert problem.message == "from: 'bsae' names no task of the manifest (did you mean 'base'?)"


def test_a_missing_name_in_a_csv_from_column_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("prompt,from\na,\nb,nowhere\n", encoding="utf-8")
    (problem,) = problems_of(tmp_path, "rows: e.csv\n")
    assert (problem.file, problem.line) == (str(tmp_path / "e.csv"), 3)
    assert "from: 'nowhere' names no task" in problem.message


def test_a_parent_in_a_csv_file_is_found_though_the_tasks_come_first(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("prompt,sku\na mug,A-1\n", encoding="utf-8")
    specs = specs_of(
        tmp_path, "tasks: [{from: base-A-1, prompt: make it blue}]\nrows: {file: p.csv, name: 'base-{sku}'}\n"
    )
    assert [s.prompt for s in specs] == ["a mug", "make it blue"]


def test_from_needs_room_for_its_input_among_the_ten_images(tmp_path: Path) -> None:
    urls = ", ".join(f"https://e.com/{i}.png" for i in range(10))
    (problem,) = problems_of(
        tmp_path, f"tasks:\n  - {{name: b, prompt: x}}\n  - {{from: b, prompt: y, images: [{urls}]}}\n"
    )
    assert problem.line == 3 and "at most 9 input images besides the one from: gives" in problem.message


def test_a_from_template_may_use_only_variables(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "tasks: [{name: b, prompt: x}, {from: '{base}', prompt: y}]\n")
    assert "undefined variable 'base' in from template" in problem.message


# --- local input images ----------------------------------------------------------------------------------


def test_a_local_image_is_named_by_its_content(tmp_path: Path) -> None:
    sticker = png(tmp_path / "assets" / "sticker.png")
    (spec,) = specs_of(tmp_path, "tasks: [{prompt: add the sticker, images: [assets/sticker.png]}]\n")
    (ref,) = spec.images
    digest = hashlib.sha256(sticker.read_bytes()).hexdigest()
    assert ref == f"file:{digest}:{sticker}"
    assert image_identity(ref) == f"sha256:{digest}"
    # the same bytes elsewhere are the same task; edited bytes a new one
    png(tmp_path / "other" / "copy.png")
    (moved,) = specs_of(tmp_path, "tasks: [{prompt: add the sticker, images: [other/copy.png]}]\n")
    assert moved.key == spec.key
    png(tmp_path / "assets" / "sticker.png", look="edited")
    (edited,) = specs_of(tmp_path, "tasks: [{prompt: add the sticker, images: [assets/sticker.png]}]\n")
    assert edited.key != spec.key


def test_urls_and_data_uris_keep_the_keys_they_always_had(tmp_path: Path) -> None:
    (spec,) = specs_of(tmp_path, "tasks: [{prompt: edit, images: [https://e.com/a.png]}]\n")
    assert spec.key == spec_key(spec.model, "edit", "1K", "1x1", ("https://e.com/a.png",))


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (None, "input image 'in.png' not found (looked for"),
        (b"<html>not an image</html>", "input image 'in.png' is not a PNG, JPEG or WebP image"),
        ("dir", "input image 'in.png' is not a file"),
    ],
)
def test_an_unusable_local_image_is_a_located_problem(tmp_path: Path, setup: bytes | str | None, fragment: str) -> None:
    if setup == "dir":
        (tmp_path / "in.png").mkdir()
    elif isinstance(setup, bytes):
        (tmp_path / "in.png").write_bytes(setup)
    (problem,) = problems_of(tmp_path, "tasks:\n  - prompt: edit it\n    images: [in.png]\n")
    assert (problem.line, problem.column) == (3, 13)
    assert fragment in problem.message


def test_csv_images_are_relative_to_the_csv_file(tmp_path: Path) -> None:
    png(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "e.csv").write_text("prompt,images\nedit it,a.png\nagain,b.png\n", encoding="utf-8")
    problems = problems_of(tmp_path, "rows: data/e.csv\n")
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [(3, "input image 'b.png' not found")]


def test_seed_and_variant_make_distinct_tasks_on_purpose(tmp_path: Path) -> None:
    specs = specs_of(tmp_path, "matrix: {prompt: a mug, variant: [a, b], filename: 'mug-{seed}.png'}\n")
    assert len({s.key for s in specs}) == 2
    assert [s.filename for s in specs] == ["mug-a.png", "mug-b.png"]
