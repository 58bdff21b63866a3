"""Real-world CSV files load: BOM, CRLF, quoted commas and line breaks, blank lines, odd headers, ; and tabs."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.manifest.csvsource import guess_delimiter, iter_records
from batcher.models import TaskSpec

GOOD = Path(__file__).resolve().parents[1] / "manifests" / "good"


def specs_of(path: Path) -> list[TaskSpec]:
    return list(load_manifest(path).specs())


def write(tmp_path: Path, data: str | bytes, name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_the_messy_spreadsheet_export_loads_with_the_right_lines() -> None:
    path = GOOD / "messy.csv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf ")  # a BOM, then a header with padded names
    assert b"\r\n" in path.read_bytes()
    specs = specs_of(path)
    assert [(s.source.rsplit(":", 1)[1], s.prompt, s.size) for s in specs] == [
        ("2", "Studio shot of a red mug", "1x1"),
        ("4", "Studio shot of a mug, handle left", "16x9"),  # a blank line 3 before it
        ("5", "Two-line prompt:\na tote on a hook", "3x4"),  # the record starts on line 5, ends on 7
        ("9", "Café crème in a glass cup", "1x1"),  # line 8 is all empty fields; size empty → default
        ("10", "Studio shot of a blue mug", "1x1"),  # a trailing empty field, then blank lines
    ]
    assert specs[1].variables == {"SKU": "MUG-2", "Colour": "red, glossy", "notes": 'said "hi"'}
    assert specs[2].variables["notes"] == "note\nspanning lines"  # CRLF inside quotes becomes \n


def test_header_names_are_trimmed_and_fields_matched_ignoring_case(tmp_path: Path) -> None:
    (spec,) = specs_of(write(tmp_path, " PROMPT ,  Size\t, Sku \na mug,16x9,A-1\n"))
    assert (spec.prompt, spec.size, spec.variables) == ("a mug", "16x9", {"Sku": "A-1"})


def test_short_rows_are_padded_and_trailing_empty_columns_ignored(tmp_path: Path) -> None:
    specs = specs_of(write(tmp_path, "prompt,sku,color,,\na mug,A-1\na tote,A-2,navy,,\n"))
    assert [s.variables for s in specs] == [{"sku": "A-1", "color": ""}, {"sku": "A-2", "color": "navy"}]


def test_extra_fields_that_are_empty_are_tolerated(tmp_path: Path) -> None:
    assert [s.prompt for s in specs_of(write(tmp_path, "prompt,sku\na mug,A-1,,\n"))] == ["a mug"]


def test_semicolon_and_tab_separated_files() -> None:
    assert [s.prompt for s in specs_of(GOOD / "semicolon.csv")] == [
        "Studio shot; a red mug",
        "Studio shot of a blue mug",
    ]
    assert [s.size for s in specs_of(GOOD / "tabs.tsv")] == ["16x9", "4x5"]


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("prompt,sku,size\r\n", ","),
        ("prompt;sku;size\n", ";"),
        ("prompt\tsku\n", "\t"),
        ("prompt\n", ","),
        ("prompt;notes,misc\n", ","),  # a tie goes to the comma
        ('"a;b";c;d\n', ";"),
    ],
)
def test_delimiter_is_guessed_from_the_header(header: str, delimiter: str) -> None:
    assert guess_delimiter(header) == delimiter


def test_blank_lines_before_the_header_are_skipped(tmp_path: Path) -> None:
    (spec,) = specs_of(write(tmp_path, "\n\r\nprompt\na mug\n"))
    assert spec.source.endswith(":4")


def test_records_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = write(tmp_path, 'h1,h2\n"a\n\nb",c\n\nd,"e\nf"\ng,h\n')
    assert list(iter_records(path, "x.csv")) == [
        (1, ["h1", "h2"]),
        (2, ["a\n\nb", "c"]),
        (6, ["d", "e\nf"]),
        (8, ["g", "h"]),
    ]


def test_quotes_inside_unquoted_fields_are_kept(tmp_path: Path) -> None:
    (spec,) = specs_of(write(tmp_path, 'prompt,sku\nA 12" vinyl record sleeve,A-1\n'))
    assert spec.prompt == 'A 12" vinyl record sleeve'


def test_text_after_a_closing_quote_is_a_located_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        specs_of(write(tmp_path, 'prompt,sku\nfine,A-1\n"a mug" extra,A-2\n'))
    (problem,) = caught.value.problems
    assert problem.line == 3
    assert problem.message.startswith("bad CSV quoting:")


def test_cells_are_trimmed(tmp_path: Path) -> None:
    (spec,) = specs_of(write(tmp_path, "prompt, size , sku\n  a mug  ,  16x9 , A-1 \n"))
    assert (spec.prompt, spec.size, spec.variables) == ("a mug", "16x9", {"sku": "A-1"})


def test_a_csv_row_with_an_empty_prompt_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        specs_of(write(tmp_path, "prompt,sku\na mug,A-1\n  ,A-2\n"))
    assert [(p.line, p.message) for p in caught.value.problems] == [(3, "the prompt is empty")]


def test_bad_images_cell_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        specs_of(write(tmp_path, "prompt,images\nedit it,https://e.com/a.png ftp://e.com/b.png\nagain,file.png\n"))
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (2, "image 2 'ftp://e.com/b.png' is not an http(s) URL or a data:image/... URI"),
        (3, f"input image 'file.png' not found (looked for {tmp_path / 'file.png'})"),  # a name is a local file
    ]


def test_duplicate_names_from_a_rows_template_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "prompt,sku\na mug,A-1\na tote,A-1\n")
    with pytest.raises(ManifestError) as caught:
        specs_of(write(tmp_path, "rows: {file: rows.csv, name: 'shot-{sku}'}\n", name="job.yaml"))
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == (str(tmp_path / "rows.csv"), 3)
    assert problem.message == f"duplicate task name 'shot-A-1' (first used at {tmp_path / 'rows.csv'}:2)"
