"""Bad manifests are refused with every problem located: file, line, column (YAML) and what is wrong."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from batcher.errors import ManifestError, Problem
from batcher.manifest import load_manifest

CORPUS = Path(__file__).resolve().parents[1] / "manifests"
BAD, GOOD = CORPUS / "bad", CORPUS / "good"


def problems_of(path: Path | str) -> list[Problem]:
    """Every problem of a manifest, whether found at load or while streaming its tasks."""
    try:
        manifest = load_manifest(path)
        for _ in manifest.specs():
            pass
    except ManifestError as e:
        return e.problems
    raise AssertionError(f"{path} was accepted")


# (file in tests/manifests/bad, file the problem names (None: the same), line, column, message fragment)
BAD_CASES: list[tuple[str, str | None, int | None, int | None, str]] = [
    # YAML itself
    ("syntax_error.yaml", None, 4, 10, "YAML syntax error: mapping values are not allowed"),
    ("tab_indent.yaml", None, 3, 1, "not tabs"),
    ("multiple_documents.yaml", None, 3, 1, "only one YAML document is allowed"),
    ("not_a_mapping.yaml", None, 1, 1, "the manifest must be a mapping"),
    ("empty.yaml", None, None, None, "the manifest is empty"),
    ("duplicate_key.yaml", None, 5, 1, "duplicate key 'size' (first at line 2)"),
    ("alias_bomb.yaml", None, 6, 1, "an alias bomb?"),
    ("recursive_alias.yaml", None, 2, 1, "nested more than 64 levels"),
    ("python_object_tag.yaml", None, 3, 13, "the YAML tag '!!python/object/apply:os.system' is not allowed"),
    # settings
    ("unknown_top_key.yaml", None, 2, 1, "unknown key 'budget' (did you mean 'budget_usd'?)"),
    ("unknown_output_key.yaml", None, 4, 3, "unknown key 'filenme' in output (did you mean 'filename'?)"),
    ("invalid_job_name.yaml", None, 1, 6, "job name 'spring catalog!' is not valid"),
    ("price_not_number.yaml", None, 2, 12, "price_usd must be a number, not 'five cents'"),
    ("negative_budget.yaml", None, 2, 13, "budget_usd must be greater than 0, not '-5'"),
    ("negative_price.yaml", None, 2, 12, "price_usd must be at least 0, not '-0.01'"),
    ("rate_not_positive.yaml", None, 3, 24, "rate_limit.requests_per_second must be greater than 0"),
    ("max_in_flight_fraction.yaml", None, 2, 53, "rate_limit.max_in_flight must be a whole number, not '2.5'"),
    ("max_connections_zero.yaml", None, 2, 55, "rate_limit.max_connections must be at least 1, not '0'"),
    ("unknown_provider.yaml", None, 2, 11, "unknown provider 'nope'; known providers: linkmodel, gemini, vertex"),
    (
        "batch_without_gemini.yaml",
        None,
        3,
        8,
        "route: batch needs provider: gemini or provider: vertex; LinkModel has no batch mode",
    ),
    ("batch_max_bytes_too_big.yaml", None, 5, 14, "batch.max_bytes must be at most 2,000,000,000, not '3000000000'"),
    # model, quality, size
    ("unknown_model.yaml", None, 4, 12, "unknown model 'gemini-3.1-flash-lite' (did you mean"),
    ("lite_2k.yaml", None, 3, 10, "quality 2K is not available for gemini-3.1-flash-lite-image, which only accepts 1K"),
    ("lite_model_default_quality.yaml", None, 8, 12, "quality 4K is not available for gemini-3.1-flash-lite-image"),
    ("size_number.yaml", None, 4, 11, "size '5' is not an aspect ratio of gemini-3.1-flash-lite-image; use one of 1x1"),
    ("unknown_size.yaml", None, 5, 11, "size '7x5' is not an aspect ratio"),
    # either notation names a ratio (16:9 is 16x9); one no model has is refused as written
    ("size_colon.yaml", None, 2, 7, "size '16:10' is not an aspect ratio of gemini-3.1-flash-lite-image; use one of"),
    # tasks and prompts
    ("tasks_not_list.yaml", None, 3, 3, "tasks must be a list"),
    ("missing_prompt.yaml", None, 4, 5, "the task has no prompt"),
    ("null_prompt.yaml", None, 3, 12, "prompt has no value"),
    ("empty_prompt.yaml", None, 4, 5, "the prompt is empty"),
    ("empty_rendered_prompt.yaml", None, 3, 3, "the prompt is empty"),
    ("undefined_variable.yaml", None, 3, 13, "undefined variable 'colour' in prompt template"),
    ("undefined_in_default_prompt.yaml", None, 5, 5, "undefined variable 'item' in the job's prompt template"),
    ("bad_template.yaml", None, 3, 13, "unmatched '{' at position 18; write '{{' for a literal brace"),
    ("typo_field.yaml", None, 4, 5, "unknown key 'qualty' (did you mean 'quality'?)"),
    ("variable_not_scalar.yaml", None, 4, 12, "variable 'color' must be a single value, not a list"),
    ("seed_and_variant.yaml", None, 5, 5, "give either seed or variant, not both"),
    ("duplicate_names.yaml", None, 5, 5, "duplicate task name 'hero' (first used at"),
    ("bad_image.yaml", None, 5, 7, "image 2 'ftp://example.com/mug.png' is not an http(s) URL"),
    ("too_many_images.yaml", None, 4, 13, "images must list 1 to 10 input images (got 11)"),
    ("chain_cycle.yaml", None, 6, 11, "from: 'blue' makes a cycle ('blue' → 'blue')"),
    ("chain_missing.yaml", None, 6, 11, "from: 'bsae' names no task of the manifest (did you mean 'base'?)"),
    ("zero_tasks.yaml", None, 3, 8, "the manifest has no tasks"),
    ("no_sources.yaml", None, 1, 1, "the manifest has no tasks: add tasks:, matrix: or rows:"),
    # matrices
    ("matrix_not_mapping.yaml", None, 2, 9, "matrix must be a mapping of value lists"),
    ("matrix_mapping_value.yaml", None, 4, 11, "variable 'animal' must be a single value, not a mapping"),
    ("matrix_empty_axis.yaml", None, 5, 10, "'style' is an empty list: a matrix axis needs at least one value"),
    # filenames
    ("filename_dotdot.yaml", None, 3, 13, "has a '..' part, which would leave the output directory"),
    ("filename_absolute.yaml", None, 4, 15, "'/etc/cron.d/{key}' is an absolute path"),
    ("filename_drive_letter.yaml", None, 2, 32, "starts with a drive letter"),
    ("filename_variable_segment.yaml", None, 7, 5, "filename '../A-2.png' has a '..' part"),
    ("filename_collision.yaml", None, 6, 5, "filename 'Mug.png' is also the file of task #1"),
    # rows: and CSV manifests
    ("rows_missing.yaml", None, 3, 9, "rows file 'nowhere.csv' not found"),
    ("rows_undefined_column.yaml", None, 4, 11, "undefined variable 'colour' in prompt template"),
    ("rows_bad_cell.yaml", "rows_bad_size.csv", 3, None, "size '16:10' is not an aspect ratio"),
    ("csv_no_prompt.csv", None, 1, None, "the header has no 'prompt' column (its columns: sku, name, color)"),
    ("csv_extra_fields.csv", None, 3, None, "the row has 3 fields but the header has 2 columns"),
    ("csv_unclosed_quote.csv", None, 2, None, "a quoted field starting on this line is never closed"),
    ("csv_header_only.csv", None, 1, None, "the file has a header but no data rows"),
    ("csv_lite_2k.csv", None, 3, None, "quality 2K is not available for gemini-3.1-flash-lite-image"),
    ("csv_unnamed_column.csv", None, 1, None, "column 2 of the header has no name"),
    ("csv_duplicate_column.csv", None, 1, None, "column 'Prompt' appears twice in the header (columns 1 and 3)"),
    ("csv_filename_dotdot.csv", None, 3, None, "filename '../b.png' has a '..' part"),
]


@pytest.mark.parametrize(("name", "named_file", "line", "column", "fragment"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_manifest_names_the_one_fault_where_it_is(
    name: str, named_file: str | None, line: int | None, column: int | None, fragment: str
) -> None:
    problems = problems_of(str(BAD / name))
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.file, problem.line, problem.column) == (str(BAD / (named_file or name)), line, column)
    assert fragment in problem.message


def test_the_corpus_has_a_case_for_every_bad_file() -> None:
    helpers = {"rows_products.csv", "rows_bad_size.csv"}  # data files the rows_* manifests point at
    assert {p.name for p in BAD.iterdir()} - helpers == {c[0] for c in BAD_CASES}
    assert len(BAD_CASES) >= 32


# Files whose point is their bytes (binary, huge, odd encodings): written into tmp_path by the test.
GENERATED: list[tuple[str, bytes, int | None, int | None, str]] = [
    ("nul.yaml", b"job: nul\ntasks:\n  - prompt: A red\x00 mug\n", 3, 18, "the file contains a NUL byte"),
    ("nul.csv", b"prompt,sku\nA red mug,A-1\nA blue\x00 mug,A-2\n", 3, 7, "the file contains a NUL byte"),
    ("latin1.yaml", "job: latin\ntasks:\n  - prompt: Crème brûlée\n".encode("latin-1"), 3, 15,
     "the file is not valid UTF-8 (byte 0xE8): it looks like Windows-1252/Latin-1"),
    ("cp1252.csv", "prompt,sku\nA red mug,A-1\nCrème brûlée,A-2\n".encode("cp1252"), 3, 3,
     "the file is not valid UTF-8 (byte 0xE8)"),
    ("utf16.yaml", "job: u16\ntasks: [a]\n".encode("utf-16"), 1, 1, "the file is UTF-16 encoded"),
    ("utf16.csv", "prompt,sku\nA red mug,A-1\n".encode("utf-16"), 1, 1, "the file is UTF-16 encoded"),
    ("long_line.yaml", b"job: long\ntasks:\n  - prompt: " + b"x" * 10_000_000 + b"\n", 3, None,
     "line is longer than 1 MiB"),
    ("long_line.csv", b"prompt,sku\nA red mug,A-1\n" + b"y" * 10_000_000 + b",A-2\n", 3, None,
     "line is longer than 1 MiB"),
    ("no_line_breaks.csv", b"prompt,sku\n" + b"z" * 10_000_000, 2, None, "line is longer than 1 MiB"),
    ("open_quote.csv", b'prompt,sku\nA,1\n"' + b"w\n" * 600_000 + b'",2\n', 3, None,
     'a field is longer than 1 MiB: is a quote (") left open?'),
    ("lone_cr.csv", b"prompt,sku\rA red mug,A-1\rA blue mug,A-2\r", 1, None, "lone carriage return"),
    ("control.yaml", b"job: ctl\ntasks:\n  - prompt: A red\x01 mug\n", 3, 18, "character U+0001"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "line", "column", "fragment"), GENERATED, ids=[g[0] for g in GENERATED])
def test_hostile_bytes_are_refused_cleanly_and_quickly(
    tmp_path: Path, name: str, data: bytes, line: int | None, column: int | None, fragment: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    started = time.process_time()  # this process's CPU seconds: other work on a loaded machine does not count
    problems = problems_of(str(path))
    assert time.process_time() - started < 2.0  # seconds: refused, not parsed
    assert len(problems) == 1, problems
    assert (problems[0].file, problems[0].line, problems[0].column) == (str(path), line, column)
    assert fragment in problems[0].message


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_bytes(b"job: deep\ntasks: " + b"[" * 50_000 + b"]" * 50_000 + b"\n")
    (problem,) = problems_of(path)
    if yaml.__with_libyaml__:  # libyaml stops at 1,000 levels, where the 1,001st bracket opens
        assert (problem.line, problem.column) == (2, 1007)
        assert problem.message == "YAML syntax error: exceeded maximum nesting depth"
    else:
        assert problem.message == "values are nested too deeply"


@pytest.mark.parametrize("path", sorted(p for p in GOOD.iterdir() if p.name != "everything.csv"), ids=lambda p: p.name)
def test_good_manifests_load(path: Path) -> None:
    assert list(load_manifest(path).specs())


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "job: many\n"
        "budget_usd: -1\n"
        "colour: red\n"
        "tasks:\n"
        "  - prompt: Studio shot of a {color} mug\n"
        "    size: 16:10\n"
        "  - prompt: Studio shot of a blue mug\n"
        "    model: gemini-9\n",
        encoding="utf-8",
    )
    problems = problems_of(path)
    assert [(p.line, p.column, p.message.split(" (")[0].split(";")[0]) for p in problems] == [
        (2, 13, "budget_usd must be greater than 0, not '-1'"),
        (3, 1, "unknown key 'colour'"),
        (5, 13, "undefined variable 'color' in prompt template 'Studio shot of a {color} mug'"),
        (6, 11, "size '16:10' is not an aspect ratio of gemini-3.1-flash-lite-image"),
        (8, 12, "unknown model 'gemini-9'"),
    ]


def test_messages_list_what_would_be_accepted(tmp_path: Path) -> None:
    path = tmp_path / "lists.yaml"
    path.write_text(
        "tasks:\n"
        "  - {prompt: a, model: gemini-2.5-flash-image, size: 1x4}\n"
        "  - {prompt: b, model: gemini-3.1-flash-image, quality: 8K}\n"
        "  - {prompt: c, model: dall-e}\n",
        encoding="utf-8",
    )
    size, quality, model = (p.message for p in problems_of(path))
    assert size.endswith("use one of 1x1, 2x3, 3x2, 3x4, 4x3, 4x5, 5x4, 9x16, 16x9, 21x9")  # the 2.5 model's ten
    assert "unknown quality '8K'; gemini-3.1-flash-image accepts 0.5K, 1K, 2K, 4K" in quality
    assert model.endswith("known models: gemini-3.1-flash-lite-image, gemini-3.1-flash-image, gemini-2.5-flash-image")


def test_problems_read_as_file_line_column_message() -> None:
    error = ManifestError(problems_of(str(BAD / "lite_2k.yaml")))
    assert str(error) == (
        f"{BAD / 'lite_2k.yaml'}:3:10: quality 2K is not available for gemini-3.1-flash-lite-image, "
        "which only accepts 1K"
    )


def test_bad_rows_are_skipped_and_reported_when_the_stream_ends(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("prompt,size\na red mug,1x1\na blue mug,2x2\na green mug,16x9\n", encoding="utf-8")
    manifest = load_manifest(path)  # the header is fine: rows are checked while streaming
    stream = manifest.specs()
    assert next(stream).prompt == "a red mug"
    assert next(stream).prompt == "a green mug"
    with pytest.raises(ManifestError) as caught:
        next(stream)
    assert [(p.line, p.message[:16]) for p in caught.value.problems] == [(3, "size '2x2' is no")]


def test_problem_list_is_capped_with_a_count_of_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "bad_rows.csv"
    path.write_text("prompt,size\n" + "a mug,7x7\n" * 500, encoding="utf-8")
    problems = problems_of(path)
    assert len(problems) == 201
    # ManifestError sorts by line, a line-less problem last: the count ends the list.
    assert problems[-1] == Problem(str(path), None, None, "... and 300 more problems")
    assert sorted(p.line for p in problems if p.line is not None) == list(range(2, 202))


def test_the_same_fault_reached_by_many_tasks_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("quality: 2K\ntasks: [a red mug, a blue mug, a green mug]\n", encoding="utf-8")
    assert [(p.line, p.column) for p in problems_of(path)] == [(1, 10)]


def test_the_alias_bomb_is_refused_in_well_under_a_second() -> None:
    started = time.process_time()  # CPU seconds, not the wall clock that a loaded machine stretches
    problems_of(BAD / "alias_bomb.yaml")
    assert time.process_time() - started < 1.0  # seconds


def test_a_missing_manifest_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    for name in ("absent.yaml", "absent.csv"):
        assert problems_of(tmp_path / name) == [Problem(str(tmp_path / name), None, None, "file not found")]


def test_a_rows_file_that_is_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "data.csv").mkdir()
    path = tmp_path / "job.yaml"
    path.write_text("prompt: x\nrows: data.csv\n", encoding="utf-8")
    (problem,) = problems_of(path)
    assert (problem.line, problem.column) == (2, 7)
    assert "rows file 'data.csv' is not a file" in problem.message


def test_an_empty_csv_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("\n\n", encoding="utf-8")
    assert [p.message for p in problems_of(path)] == ["the CSV file is empty: it needs a header row (prompt,...)"]


def test_job_name_from_an_unfit_file_name_asks_for_job(tmp_path: Path) -> None:
    path = tmp_path / "my job.yaml"
    path.write_text("tasks: [a red mug]\n", encoding="utf-8")
    (problem,) = problems_of(path)
    assert problem.line is None
    assert problem.message.startswith("job name 'my job' is not valid")
    assert problem.message.endswith("; set job: in the manifest")


# --- the job's provider ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def keys_of(path: Path) -> list[str]:
    return [spec.key for spec in load_manifest(path).specs()]


SIZES_JOB = """\
job: sizes
{provider}size: {default}
tasks:
  - a red mug
  - {{prompt: a blue mug, size: {wide}}}
matrix: {{prompt: a green mug, size: [{tall}, 1x1]}}
rows: {{file: sizes.csv}}
"""


@pytest.mark.parametrize("provider", ["", "provider: linkmodel\n", "provider: gemini\n"])
def test_the_same_manifest_in_either_notation_gives_the_same_task_keys(tmp_path: Path, provider: str) -> None:
    keys = []
    for sep in ("x", ":"):
        folder = tmp_path / (sep.replace(":", "colon") or "x")
        folder.mkdir()
        (folder / "sizes.csv").write_text(f"prompt,size\na lamp,9{sep}16\na tote,21{sep}9\n", encoding="utf-8")
        text = SIZES_JOB.format(provider=provider, default=f"4{sep}3", wide=f"16{sep}9", tall=f"1{sep}4")
        path = write(folder, text)
        keys.append(keys_of(path))
        assert [s.size for s in load_manifest(path).specs()] == ["4x3", "16x9", "1x4", "1x1", "9x16", "21x9"]
    assert keys[0] == keys[1]


def test_the_provider_does_not_change_a_tasks_key(tmp_path: Path) -> None:
    linkmodel = write(tmp_path, "tasks: [{prompt: a red mug, size: 16x9}]\n", "a.yaml")
    gemini = write(tmp_path, "provider: gemini\ntasks: [{prompt: a red mug, size: '16:9'}]\n", "b.yaml")
    assert keys_of(linkmodel) == keys_of(gemini)


def test_a_gemini_manifest_in_colon_notation_loads_with_canonical_sizes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job: gem\nprovider: gemini\nsize: 16:9\noutput: {filename: '{size}-{index}.png'}\n"
        "tasks:\n  - a red mug\n  - {prompt: a tall mug, size: 8:1}\n",
    )
    manifest = load_manifest(path)
    assert manifest.settings.provider == "gemini"
    specs = list(manifest.specs())
    assert [(s.size, s.filename) for s in specs] == [("16x9", "16x9-1.png"), ("8x1", "8x1-2.png")]


def test_linkmodel_is_the_default_provider(tmp_path: Path) -> None:
    assert load_manifest(write(tmp_path, "tasks: [a red mug]\n")).settings.provider == "linkmodel"
    assert load_manifest(write(tmp_path, "provider:\ntasks: [a red mug]\n")).settings.provider == "linkmodel"
    csv = write(tmp_path, "prompt,size\na red mug,16:9\n", "rows.csv")
    manifest = load_manifest(csv)  # a CSV manifest has no job-level settings: always the default provider
    assert manifest.settings.provider == "linkmodel"
    assert [s.size for s in manifest.specs()] == ["16x9"]


def test_an_unknown_provider_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "job: p\nprovider: nope\ntasks: [a red mug]\n")
    (problem,) = problems_of(path)
    assert str(problem) == f"{path}:2:11: unknown provider 'nope'; known providers: linkmodel, gemini, vertex"
    path = write(tmp_path, "provider: gemni\nbudget_usd: -1\ntasks: [a red mug]\n")
    assert [p.message.split(",")[0] for p in problems_of(path)] == [
        "unknown provider 'gemni' (did you mean 'gemini'?); known providers: linkmodel",
        "budget_usd must be greater than 0",  # the other settings are still checked
    ]
    (problem,) = problems_of(write(tmp_path, "provider: [gemini]\ntasks: [a red mug]\n"))
    assert (problem.line, problem.column, problem.message) == (1, 11, "provider must be text, not a list")


def test_a_bad_size_lists_the_providers_ratios_in_its_notation(tmp_path: Path) -> None:
    text = (
        "provider: gemini\ntasks:\n  - {prompt: a, size: 7x5}\n"
        "  - {prompt: b, model: gemini-2.5-flash-image, size: 1x4}\n"
    )
    first, second = problems_of(write(tmp_path, text))
    assert (first.line, first.column) == (3, 23)
    assert first.message == (
        "size '7x5' is not an aspect ratio of gemini-3.1-flash-lite-image; use one of 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, "
        "5:4, 9:16, 16:9, 21:9, 1:4, 4:1, 1:8, 8:1"
    )
    assert second.message.startswith("size '1:4' is not an aspect ratio of gemini-2.5-flash-image; use one of 1:1")
    assert second.message.endswith("16:9, 21:9")
    csv = "prompt,size\na,16:10\n"
    (tmp_path / "bad.csv").write_text(csv, encoding="utf-8")
    (problem,) = problems_of(write(tmp_path, "provider: gemini\nrows: bad.csv\n"))
    assert (problem.file, problem.line) == (str(tmp_path / "bad.csv"), 2)
    assert problem.message.startswith(
        "size '16:10' is not an aspect ratio of gemini-3.1-flash-lite-image; use one of 1:1"
    )


def test_an_unknown_model_lists_the_providers_models(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "provider: gemini\nmodel: imagen-4\ntasks: [a red mug]\n"))
    assert (problem.line, problem.column) == (2, 8)
    assert problem.message == (
        "unknown model 'imagen-4'; known models: gemini-3.1-flash-lite-image, gemini-3.1-flash-image, "
        "gemini-2.5-flash-image"
    )


def urls(n: int) -> str:
    return "[" + ", ".join(f"https://e.com/{i}.png" for i in range(n)) + "]"


def test_the_input_image_limit_is_the_models(tmp_path: Path) -> None:
    ok = (
        f"provider: gemini\ntasks:\n  - {{prompt: a, images: {urls(14)}}}\n"
        f"  - {{prompt: b, model: gemini-2.5-flash-image, images: {urls(3)}}}\n"
    )
    assert len(list(load_manifest(write(tmp_path, ok, "ok.yaml")).specs())) == 2
    bad = (
        f"provider: gemini\ntasks:\n  - {{prompt: a, images: {urls(15)}}}\n"
        f"  - {{prompt: b, model: gemini-2.5-flash-image, images: {urls(4)}}}\n"
        f"  - {{name: c, prompt: c}}\n"
        f"  - {{from: c, prompt: d, model: gemini-2.5-flash-image, images: {urls(3)}}}\n"
    )
    assert [(p.line, p.message) for p in problems_of(write(tmp_path, bad, "bad.yaml"))] == [
        (3, "images must list 1 to 14 input images (got 15), or be left out"),
        (4, "gemini-2.5-flash-image takes at most 3 input images (got 4)"),
        (6, "gemini-2.5-flash-image takes at most 3 input images: images may list 2 besides the one from: gives"),
    ]
    # LinkModel takes 10 on every model: its message is as before
    (problem,) = problems_of(write(tmp_path, f"tasks: [{{prompt: a, images: {urls(11)}}}]\n", "link.yaml"))
    assert problem.message == "images must list 1 to 10 input images (got 11), or be left out"


def test_a_matrix_checks_its_images_against_each_model_of_its_axis(tmp_path: Path) -> None:
    text = (
        "provider: gemini\nmatrix:\n  prompt: a mug\n  model: [gemini-3.1-flash-image, gemini-2.5-flash-image]\n"
        f"  images: {urls(5)}\n"
    )
    (problem,) = problems_of(write(tmp_path, text))
    assert (problem.line, problem.message) == (5, "gemini-2.5-flash-image takes at most 3 input images (got 5)")


def test_a_csv_row_is_checked_against_its_own_models_image_limit(tmp_path: Path) -> None:
    four = " ".join(f"https://e.com/{i}.png" for i in range(4))
    csv = f"prompt,model,images\na,gemini-3.1-flash-image,{four}\nb,gemini-2.5-flash-image,{four}\n"
    (tmp_path / "rows.csv").write_text(csv, encoding="utf-8")
    (problem,) = problems_of(write(tmp_path, "provider: gemini\nrows: rows.csv\n"))
    assert (problem.file, problem.line) == (str(tmp_path / "rows.csv"), 3)
    assert problem.message == "gemini-2.5-flash-image takes at most 3 input images (got 4)"
    # images given in the manifest for every row meet each row's model too
    (tmp_path / "models.csv").write_text("prompt,model\na,gemini-3.1-flash-image\nb,gemini-2.5-flash-image\n")
    (problem,) = problems_of(write(tmp_path, f"provider: gemini\nrows: {{file: models.csv, images: {urls(4)}}}\n"))
    assert (problem.file, problem.line) == (str(tmp_path / "models.csv"), 3)


# --- the job's route: online, or the provider's batch mode ---------------------------------------------


def test_the_route_is_online_unless_batch_is_asked_for(tmp_path: Path) -> None:
    s = load_manifest(write(tmp_path, "provider: gemini\ntasks: [a red mug]\n")).settings
    assert (s.route, s.batch_max_requests, s.batch_max_bytes, s.batch_price_usd) == ("online", None, None, None)
    assert load_manifest(write(tmp_path, "route: online\ntasks: [a red mug]\n")).settings.route == "online"
    assert load_manifest(write(tmp_path, "prompt,size\na red mug,1x1\n", "rows.csv")).settings.route == "online"


def test_a_gemini_batch_job_keeps_its_batch_settings(tmp_path: Path) -> None:
    text = (
        "provider: gemini\nroute: batch\n"
        "batch: {max_requests: 100000, max_bytes: 2000000000, price_usd: 0.0300}\ntasks: [a red mug]\n"
    )
    s = load_manifest(write(tmp_path, text)).settings
    assert (s.route, s.batch_max_requests, s.batch_max_bytes) == ("batch", 100_000, 2_000_000_000)
    assert s.batch_price_usd == Decimal("0.0300")  # exactly as written
    bare = load_manifest(write(tmp_path, "provider: gemini\nroute: batch\ntasks: [a red mug]\n")).settings
    assert (bare.route, bare.batch_max_requests, bare.batch_max_bytes, bare.batch_price_usd) == (
        "batch",
        None,
        None,
        None,
    )


def test_a_vertex_batch_job_keeps_its_staging_place(tmp_path: Path) -> None:
    text = "provider: vertex\nroute: batch\nbatch: {staging: gs://my-bucket/batches/}\ntasks: [a red mug]\n"
    s = load_manifest(write(tmp_path, text)).settings
    assert (s.provider, s.route, s.batch_staging) == ("vertex", "batch", "gs://my-bucket/batches")
    bare = load_manifest(write(tmp_path, "provider: vertex\nroute: batch\ntasks: [a red mug]\n")).settings
    assert bare.batch_staging is None  # the run says what is missing, naming --staging too


def test_batch_needs_a_provider_with_a_batch_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "job: b\nroute: batch\ntasks: [a red mug]\n")  # the default provider: LinkModel
    (problem,) = problems_of(path)
    assert str(problem) == (
        f"{path}:2:8: route: batch needs provider: gemini or provider: vertex; LinkModel has no batch mode"
    )


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("route: bacth", 8, "unknown route 'bacth' (did you mean 'batch'?); the routes are: online, batch"),
        ("route: [batch]", 8, "route must be text, not a list"),
        ("batch: {max_requests: 0}", 23, "batch.max_requests must be at least 1, not '0'"),
        ("batch: {max_requests: 100001}", 23, "batch.max_requests must be at most 100,000, not '100001'"),
        ("batch: {max_requests: 2.5}", 23, "batch.max_requests must be a whole number, not '2.5'"),
        ("batch: {max_bytes: 0}", 20, "batch.max_bytes must be at least 1, not '0'"),
        ("batch: {price_usd: -0.01}", 20, "batch.price_usd must be at least 0, not '-0.01'"),
        ("batch: {price_usd: cheap}", 20, "batch.price_usd must be a number, not 'cheap'"),
        ("batch: {max_request: 5}", 9, "unknown key 'max_request' in batch (did you mean 'max_requests'?)"),
        ("batch: 100", 8, "batch must be a mapping"),
        (
            "batch: {staging: s3://b/x}",
            18,
            "batch.staging must be a Cloud Storage folder, gs://BUCKET/PREFIX, not 's3://b/x'",
        ),
        ("batch: {staging: gs://Big_Bucket/x}", 18, "batch.staging must name a Cloud Storage bucket"),
        ("batch: {staging: 'gs://b12/a//b'}", 18, "batch.staging must be a plain folder path after the bucket"),
        ("batch: {staging: [gs://b12/x]}", 18, "batch.staging must be text, not a list"),
    ],
)
def test_a_bad_route_or_batch_setting_is_named_where_it_is(
    tmp_path: Path, text: str, column: int, message: str
) -> None:
    path = write(tmp_path, f"provider: gemini\n{text}\ntasks: [a red mug]\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.column) == (2, column)
    assert message in problem.message
