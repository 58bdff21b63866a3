"""Templates fill in values; filenames built from them can never leave the output directory."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.manifest.expansion import FilenameTable
from batcher.manifest.templates import (
    TemplateError,
    check_filename_template,
    check_relative_path,
    compile_template,
    literal_template,
)
from batcher.models import LOCAL_REF, image_identity, normalise_prompt, spec_key

VALUES: dict[str, str | int] = {"animal": "cat", "style": "3d", "n": "7", "price": "1.5", "index": 42, "key": "abc"}


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("Sticker of a {animal}, {style} style", "Sticker of a cat, 3d style"),
        ("no placeholders", "no placeholders"),
        ("", ""),
        ("{{literal}} braces and {animal}", "{literal} braces and cat"),
        ("{{{animal}}}", "{cat}"),
        ("{animal}{animal}", "catcat"),
        ("{index:05d}-{key}.png", "00042-abc.png"),
        ("{animal:>5}|{animal:<5}|", "  cat|cat  |"),
        ("{n:03d}", "007"),  # a numeric spec on text that spells a number: values arrive as text
        ("{price:.2f}", "1.50"),
        ("{index:x}", "2a"),
    ],
)
def test_render_fills_in_values(template: str, rendered: str) -> None:
    assert compile_template(template).render(VALUES) == rendered


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("A {mug", "unmatched '{' at position 3; write '{{' for a literal brace"),
        ("A mug}", "unmatched '}' at position 6; write '}}' for a literal brace"),
        ("A {} mug", "empty placeholder '{}' at position 3"),
        ("{ :>3}", "empty placeholder '{ :>3}' at position 1"),
        ("{n:%%zz}", "'{n:%%zz}' has an invalid format spec"),
    ],
)
def test_compile_names_the_fault(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        compile_template(template)


def test_a_numeric_spec_on_text_that_is_no_number_says_so() -> None:
    with pytest.raises(TemplateError, match=re.escape("cannot format 'cat' with '{animal:03d}'")):
        compile_template("{animal:03d}").render(VALUES)


def test_names_lists_the_placeholders() -> None:
    template = compile_template("{a} and {b:>3} and {a}")
    assert template.names == {"a", "b"}
    assert template.order == ("a", "b", "a")


def test_a_literal_template_renders_its_text_braces_included() -> None:
    assert literal_template("{not a placeholder}").render({}) == "{not a placeholder}"


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("C:\\Windows\\win.ini", "C__Windows_win.ini"),
        ("a\x00b\nc\x7fd", "a_b_c_d"),
        ('what? "this" <is> *it*|', "what_ _this_ _is_ _it__"),
        ("Café crème", "Café crème"),
    ],
)
def test_values_in_filenames_lose_separators_and_control_characters(value: str, safe: str) -> None:
    assert compile_template("{v}.png").render_filename({"v": value}) == f"{safe}.png"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("a.png", None),
        ("shots/red/a.png", None),
        ("..a.png", None),
        ("", "is empty"),
        ("/etc/passwd", "is an absolute path"),
        ("\\\\server\\share\\a.png", "is an absolute path"),
        ("C:a.png", "starts with a drive letter"),
        ("c:/a.png", "starts with a drive letter"),
        ("a/../../b.png", "has a '..' part"),
        ("..", "has a '..' part"),
        ("a//b.png", "has an empty or '.' part"),
        ("./a.png", "has an empty or '.' part"),
        ("shots/", "has an empty or '.' part"),
        ("a\\b.png", "contains '\\'"),
        ("a\x01.png", "contains a control character"),
        ("a" * 256 + ".png", "has a part longer than 255 bytes"),
        ("é" * 128, "has a part longer than 255 bytes"),  # 256 bytes in UTF-8
    ],
)
def test_relative_path_check(path: str, why: str | None) -> None:
    result = check_relative_path(path)
    assert result == why if why is None else result is not None and result.startswith(why)


@pytest.mark.parametrize(
    ("template", "unsafe"),
    [
        ("{sku}.png", False),
        ("{folder}/{sku}.png", False),
        ("../{sku}.png", True),
        ("/{sku}.png", True),
        ("{a}/../{b}", True),
        ("D:{sku}", True),
        ("", True),
        ("{sku}//x", True),
    ],
)
def test_filename_template_check_sees_its_own_text(template: str, unsafe: bool) -> None:
    assert (check_filename_template(compile_template(template)) is not None) == unsafe


def _write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_default_filename_is_index_then_short_key(tmp_path: Path) -> None:
    specs = list(load_manifest(_write(tmp_path, "tasks: [a red mug, a blue mug]\n")).specs())
    assert [s.filename for s in specs] == [f"00001-{specs[0].key[:12]}.png", f"00002-{specs[1].key[:12]}.png"]


def test_filename_can_use_builtins_and_variables(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'output: {filename: "{model}/{quality}/{size}/{seed}/{sku}-{index:03d}-{key}.png"}\n'
        "tasks: [{prompt: a red mug, sku: A-1, size: 16x9, seed: s1}]\n",
    )
    (spec,) = load_manifest(path).specs()
    assert spec.filename == f"gemini-3.1-flash-lite-image/1K/16x9/s1/A-1-001-{spec.key[:12]}.png"


def test_builtins_win_over_variables_named_key_or_index(tmp_path: Path) -> None:
    path = _write(tmp_path, 'output: {filename: "{key}-{index}.png"}\ntasks: [{prompt: a mug, key: mine, index: x}]\n')
    (spec,) = load_manifest(path).specs()
    assert spec.filename == f"{spec.key[:12]}-1.png"
    assert spec.variables == {"key": "mine", "index": "x"}  # still the prompt's to use


def test_a_seed_in_a_filename_is_made_safe_too(tmp_path: Path) -> None:
    path = _write(tmp_path, 'output: {filename: "{seed}.png"}\ntasks: [{prompt: a mug, seed: a/b}]\n')
    (spec,) = load_manifest(path).specs()
    assert (spec.filename, spec.seed) == ("a_b.png", "a/b")


def test_an_empty_value_making_an_empty_folder_name_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, 'output: {filename: "{folder}/{sku}.png"}\ntasks: [{prompt: a mug, folder: "", sku: A}]\n')
    with pytest.raises(ManifestError, match=re.escape("filename '/A.png' is an absolute path")):
        list(load_manifest(path).specs())


def test_same_filename_for_the_same_spec_is_no_collision(tmp_path: Path) -> None:
    # Duplicates are collapsed by the store; they may share their file.
    path = _write(
        tmp_path, 'output: {filename: "{sku}.png"}\ntasks: [{prompt: a mug, sku: A}, {prompt: a mug, sku: A}]\n'
    )
    assert [s.filename for s in load_manifest(path).specs()] == ["A.png", "A.png"]


def test_prompts_may_hold_literal_braces(tmp_path: Path) -> None:
    path = _write(tmp_path, 'tasks: [{prompt: "A sign reading {{OPEN}} over a {shop}", shop: bakery}]\n')
    (spec,) = load_manifest(path).specs()
    assert spec.prompt == "A sign reading {OPEN} over a bakery"


def test_a_field_used_in_a_prompt_gets_a_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, 'tasks: [{prompt: "A {size} poster", size: 16x9}]\n')
    with pytest.raises(ManifestError, match=re.escape("('size' is a task field; a prompt can use only variables)")):
        load_manifest(path)


def test_names_are_templates_too(tmp_path: Path) -> None:
    path = _write(tmp_path, 'matrix: {prompt: "A {animal}", animal: [cat, dog], name: "pet-{animal}"}\n')
    assert [s.name for s in load_manifest(path).specs()] == ["pet-cat", "pet-dog"]


# --- the key is the hash of the spec's canonical JSON, now and forever (stored keys depend on it) ---------

text = st.text(st.characters(codec="utf-8"), max_size=40)


@given(text, text, text, text, st.lists(text, max_size=3).map(tuple), st.none() | text)
@example("m", "p", "q", "s", (LOCAL_REF,), None)  # a local file is known by its content hash, not its path
@example("m", "p", "q", "s", (LOCAL_REF + "a" * 64 + ":/x/y.png",), None)
def test_spec_key_hashes_the_canonical_json(
    model: str, prompt: str, quality: str, size: str, images: tuple[str, ...], seed: str | None
) -> None:
    canon = json.dumps(
        [model, normalise_prompt(prompt), quality, size, [image_identity(i) for i in images], seed],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert spec_key(model, prompt, quality, size, images, seed) == hashlib.sha256(canon.encode()).hexdigest()[:32]


# --- which task writes which file -------------------------------------------------------------------------


def test_filename_table_tells_a_second_spec_from_a_duplicate() -> None:
    table = FilenameTable(capacity=8)
    key_a, key_b = "a" * 32, "b" * 32
    for task in range(1, 101):  # grows past its first capacity several times
        assert table.claim(f"file-{task}.png", key_a, task) is None
    assert table.claim("file-7.png", key_a, 101) is None  # the same spec again: a duplicate, not a clash
    assert table.claim("FILE-7.png", key_b, 102) == 7  # another spec, same file on a case-blind disk
