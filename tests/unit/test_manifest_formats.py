"""What a YAML or CSV manifest says becomes job settings and task specs: keys, defaults, values, order."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from batcher.catalog import DEFAULT_MODEL
from batcher.manifest import load_manifest
from batcher.models import JobSettings, TaskSpec

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "manifests" / "good"


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def only(path: Path) -> TaskSpec:
    (spec,) = load_manifest(path).specs()
    return spec


def test_yaml_settings_become_job_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job: spring-catalog\n"
        "output: {dir: out/spring, filename: '{sku}-{size}.png'}\n"
        "price_usd: 0.05\n"
        "budget_usd: 20\n"
        "rate_limit: {requests_per_second: 5, max_in_flight: 32, max_connections: 16}\n"
        "retries: {max_attempts: 5}\n"
        "tasks: [{prompt: Studio shot of a red mug, size: 16x9, sku: A-1}]\n",
    )
    manifest = load_manifest(path)
    assert manifest.path == path
    assert manifest.settings == JobSettings(
        name="spring-catalog", output_dir=str(tmp_path / "out" / "spring"), price_usd=Decimal("0.05"), budget_usd=Decimal("20"),
        requests_per_second=5.0, max_in_flight=32, max_connections=16, max_attempts=5,
    )  # fmt: skip
    assert str(manifest.settings.price_usd) == "0.05"  # exact, as written: never via a float


def test_left_out_keys_take_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks:\n  - prompt: Studio shot of a red mug\n", name="mugs.yaml")
    manifest = load_manifest(path)
    assert manifest.settings == JobSettings(name="mugs", output_dir=str(tmp_path / "out" / "mugs"))
    spec = only(path)
    assert (spec.model, spec.quality, spec.size, spec.seed, spec.name, spec.images) == (
        DEFAULT_MODEL, "1K", "1x1", None, None, ()
    )  # fmt: skip


def test_output_may_be_just_the_folder(tmp_path: Path) -> None:
    settings = load_manifest(write(tmp_path, "output: renders\ntasks: [a mug]\n")).settings
    assert settings.output_dir == str(tmp_path / "renders")  # the manifest's folder, not the current one


def test_job_wide_model_quality_size_and_prompt_apply_to_every_task(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model: gemini-3.1-flash-image\nquality: 4K\nsize: 21x9\nprompt: 'Banner of a {thing}'\n"
        "tasks: [{thing: lighthouse}, {thing: canyon, size: 1x1, quality: 0.5K}]\n",
    )
    specs = list(load_manifest(path).specs())
    assert [(s.model, s.quality, s.size, s.prompt) for s in specs] == [
        ("gemini-3.1-flash-image", "4K", "21x9", "Banner of a lighthouse"),
        ("gemini-3.1-flash-image", "0.5K", "1x1", "Banner of a canyon"),
    ]


def test_a_task_may_be_just_its_prompt(tmp_path: Path) -> None:
    specs = list(load_manifest(write(tmp_path, "tasks:\n  - A red mug\n  - A blue mug\n")).specs())
    assert [s.prompt for s in specs] == ["A red mug", "A blue mug"]


def test_quality_and_size_are_read_leniently(tmp_path: Path) -> None:
    spec = only(write(tmp_path, "tasks: [{prompt: a mug, quality: 1k, size: 16X9}]\n"))
    assert (spec.quality, spec.size) == ("1K", "16x9")


def test_variant_is_another_name_for_seed(tmp_path: Path) -> None:
    specs = list(
        load_manifest(write(tmp_path, "tasks: [{prompt: a mug, variant: b}, {prompt: a mug, seed: 7}]\n")).specs()
    )
    assert [s.seed for s in specs] == ["b", "7"]
    assert specs[0].key != specs[1].key


def test_images_may_be_one_url_or_a_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks:\n"
        "  - {prompt: make it blue, images: https://example.com/a.png}\n"
        "  - {prompt: make it blue, images: [https://example.com/a.png, 'data:image/png;base64,iVBORw0KGgo=']}\n",
    )
    specs = list(load_manifest(path).specs())
    assert specs[0].images == ("https://example.com/a.png",)
    assert specs[1].images == ("https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=")


def test_other_task_keys_are_variables_kept_as_written() -> None:
    (spec,) = load_manifest(GOOD / "yaml_typing.yaml").specs()
    # YAML 1.1 would read 00123 as 83, yes as True, 16:9 as 969; the manifest keeps what was typed.
    assert spec.variables == {
        "sku": "00123", "batch": "0x1F", "glossy": "yes", "price": "1.50", "since": "2024-01-05", "ratio": "16:9",
    }  # fmt: skip
    assert spec.prompt == "Product 00123, batch 0x1F, glossy yes, price 1.50, since 2024-01-05, ratio 16:9"


def test_anchors_merge_keys_and_x_keys() -> None:
    specs = list(load_manifest(GOOD / "anchors.yaml").specs())
    assert [(s.size, s.variables) for s in specs] == [
        ("4x5", {"backdrop": "seamless light grey"}),
        ("1x1", {"backdrop": "seamless light grey"}),  # a key written in the task wins over the merged one
    ]


def test_source_is_the_file_and_line_of_each_task(tmp_path: Path) -> None:
    path = write(tmp_path, "job: j\ntasks:\n  - prompt: a\n  - {prompt: b}\n\n  - c\n")
    assert [s.source for s in load_manifest(path).specs()] == [f"{path}:3", f"{path}:4", f"{path}:6"]


def test_the_path_is_reported_as_the_user_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "tasks: [a mug]\n", name="j.yaml")
    monkeypatch.chdir(tmp_path)
    assert only(Path("j.yaml")).source == "j.yaml:1"


def test_identical_tasks_are_all_yielded(tmp_path: Path) -> None:
    specs = list(load_manifest(write(tmp_path, "tasks: [a mug, a mug, '  a   mug ']\n")).specs())
    assert len(specs) == 3
    assert len({s.key for s in specs}) == 1  # the consumer collapses them by key


def test_tasks_matrix_and_rows_come_in_document_order(tmp_path: Path) -> None:
    write(tmp_path, "prompt,sku\nfrom the csv,C-1\n", name="rows.csv")
    path = write(tmp_path, "rows: rows.csv\nmatrix: {prompt: 'from the {n}', n: [matrix]}\ntasks: [from the tasks]\n")
    assert [s.prompt for s in load_manifest(path).specs()] == ["from the csv", "from the matrix", "from the tasks"]


def test_specs_can_be_streamed_again_and_reread_the_csv(tmp_path: Path) -> None:
    csv = write(tmp_path, "prompt\na red mug\n", name="rows.csv")
    manifest = load_manifest(write(tmp_path, "rows: rows.csv\n"))
    assert [s.prompt for s in manifest.specs()] == ["a red mug"]
    csv.write_text("prompt\na red mug\na blue mug\n", encoding="utf-8")
    assert [s.prompt for s in manifest.specs()] == ["a red mug", "a blue mug"]


def test_csv_manifest_job_is_the_file_stem(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, "prompt,size\na red mug,16x9\n", name="spring-2026.csv"))
    assert manifest.settings == JobSettings(name="spring-2026", output_dir=str(tmp_path / "out" / "spring-2026"))
    (spec,) = manifest.specs()
    assert (spec.prompt, spec.size, spec.source) == ("a red mug", "16x9", f"{tmp_path / 'spring-2026.csv'}:2")


def test_csv_manifest_special_and_variable_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompt,model,quality,size,filename,seed,images,sku,name\n"
        "edit it,gemini-3.1-flash-image,2k,4X5,shots/a.png,s1,https://e.com/1.png https://e.com/2.png,A-1,Mug\n",
        name="all.csv",
    )
    spec = only(path)
    assert (spec.model, spec.quality, spec.size, spec.filename, spec.seed) == (
        "gemini-3.1-flash-image", "2K", "4x5", "shots/a.png", "s1"
    )  # fmt: skip
    assert spec.images == ("https://e.com/1.png", "https://e.com/2.png")
    assert spec.variables == {"sku": "A-1", "name": "Mug"}  # `name` is a variable in CSV files, not the task name
    assert spec.name is None


def test_demo_and_catalog_examples_load() -> None:
    demo = load_manifest(REPO / "jobs" / "demo.yaml")
    specs = list(demo.specs())
    assert 6 <= len(specs) <= 12
    assert len({s.key for s in specs}) == len(specs)
    assert demo.settings.name == "demo"
    catalog = load_manifest(REPO / "jobs" / "catalog.yaml")
    rows = list(catalog.specs())
    assert catalog.settings.price_usd == Decimal("0.05")
    assert [s.filename for s in rows][:2] == ["MUG-001-1x1.png", "MUG-002-1x1.png"]
    assert [s for s in rows if "products.csv" in s.source][-1].size == "16x9"  # the size column overrides the default


def test_block_scalar_prompts_lose_their_final_line_break(tmp_path: Path) -> None:
    spec = only(write(tmp_path, "tasks:\n  - prompt: |\n      A red mug,\n      studio light\n"))
    assert spec.prompt == "A red mug,\nstudio light"
