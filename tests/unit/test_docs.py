"""The documentation cannot silently go stale: every page is in the site's nav, the README stays a front page
whose links resolve, the exit-code and environment tables equal what the code holds, every test a page names
exists, and every snippet a page includes is there. (`make docs` builds the site with --strict on top.)"""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml

from batcher.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200

ENV_NAME = re.compile(r"(?:BATCHER|LINKMODEL|GEMINI|GOOGLE)_[A-Z0-9_]+")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"\b((?:tests|bench)/[\w/]+\.py)(?:::(\w+))?")
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\w+))?"$', re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


# --- reading the pages ----------------------------------------------------------------------------------


def nav_pages(nav: Any) -> list[str]:
    """Every page a mkdocs nav names, in order (a nav is a list of pages, {title: page} or {title: [nav]})."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    raise TypeError(f"not a nav entry: {nav!r}")


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in `text`, cells stripped (header and rule left out)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows[2:]


def exit_code_rows(text: str) -> dict[int, str]:
    """code -> ExitCode name, from the exit-code page's table (`| \\`2\\` | \\`USAGE\\` | ... |`)."""
    return {int(row[0].strip("`")): row[1].strip("`") for row in table_rows(text)}


def env_rows(text: str) -> set[str]:
    """The variables the environment page's first table names (the tests' own table comes after it)."""
    return {row[0].strip("`") for row in table_rows(text)}


def env_names_in_code(package: Path) -> set[str]:
    """Every string constant in the package that is wholly a variable name of ours or Google's: each is read
    from the environment (the names are kept as constants where they are read, or passed to env.get)."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                found.add(node.value)
    return found


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (its default slugify)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file, or whose heading anchor in a Markdown file, is not there."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: — outside the repository
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    return broken


def missing_test_refs(text: str, root: Path) -> list[str]:
    """`tests/x.py` and `tests/x.py::name` (or bench/) named in `text` whose file or top-level name is absent."""
    missing = []
    for file, name in TEST_REF.findall(text):
        path = root / file
        if not path.is_file():
            missing.append(file)
            continue
        if name and name not in top_level_names(path):
            missing.append(f"{file}::{name}")
    return missing


def top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


# --- the checks -----------------------------------------------------------------------------------------


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    on_disk = [p.relative_to(DOCS).as_posix() for p in pages()]
    assert sorted(listed) == sorted(on_disk)
    assert len(listed) == len(set(listed)), "a page is listed twice"


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    assert "make demo" in README.read_text() and "make test" in README.read_text()
    assert broken_links(README) == []


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_links_between_pages_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_exit_code_table_is_exitcode() -> None:
    table = exit_code_rows((DOCS / "reference" / "exit-codes.md").read_text())
    assert table == {int(code): code.name for code in ExitCode}


def test_the_environment_table_names_every_variable_the_code_reads() -> None:
    table = env_rows((DOCS / "reference" / "environment.md").read_text())
    assert table == env_names_in_code(ROOT / "batcher")


def test_every_test_a_page_names_exists() -> None:
    texts = [p.read_text() for p in [*pages(), README, ROOT / "CHANGELOG.md"]]
    named = [ref for text in texts for ref in TEST_REF.findall(text)]
    assert len(named) > 40  # the guarantees and Batch Mode pages name their tests one by one
    assert [m for text in texts for m in missing_test_refs(text, ROOT)] == []


def test_every_snippet_a_page_includes_is_there() -> None:
    included = [(p, m) for p in pages() for m in SNIPPET.findall(p.read_text())]
    assert included, "the home page, the commands page and the changelog include snippets"
    for page, (file, section) in included:
        source = ROOT / file
        assert source.is_file(), f"{page.name} includes {file}, which is not there"
        if section:
            text = source.read_text()
            for edge in ("start", "end"):
                assert f"--8<-- [{edge}:{section}]" in text, f"{page.name}: no {edge} of {file}:{section}"


# --- the checks can fail --------------------------------------------------------------------------------


def test_a_stale_exit_code_table_is_caught() -> None:
    stale = "| code | `ExitCode` | meaning |\n| --- | --- | --- |\n| `0` | `OK` | fine |\n| `9` | `GONE` | |\n"
    assert exit_code_rows(stale) != {int(code): code.name for code in ExitCode}


def test_a_variable_read_by_the_code_but_not_documented_is_caught(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text('import os\nURL = os.environ.get("GOOGLE_GEMINI_BASE_URL")\n')
    assert env_names_in_code(tmp_path) == {"GOOGLE_GEMINI_BASE_URL"}


def test_broken_links_and_missing_tests_are_caught(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with commas\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section-with-commas) [gone](nowhere.md) [no anchor](other.md#nope) [web](https://x.org)\n"
    )
    assert broken_links(page) == ["nowhere.md", "other.md#nope"]
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_here() -> None: ...\n")
    text = "`tests/test_x.py::test_here`, `tests/test_x.py::test_gone`, `tests/test_y.py`"
    assert missing_test_refs(text, tmp_path) == ["tests/test_x.py::test_gone", "tests/test_y.py"]
