"""Installing this project as the README and docs say: its own distribution name, a wheel that works, `--version`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import batcher as package
from tests.acceptance.cli_kit import batcher, cli_env

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "batcher-images"


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def _readme_commands() -> list[str]:
    """The lines of the shell blocks of the README and the documentation's pages (docs/install.md has the rest)."""
    lines, inside = [], False
    texts = [p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]]
    for line in "\n".join(texts).splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        if inside:
            lines.append(line.split("#", 1)[0].strip())
    return lines


def test_the_distribution_is_not_the_unrelated_batcher_on_pypi() -> None:
    project = _project()
    assert project["name"] == DISTRIBUTION
    assert project["scripts"] == {"batcher": "batcher.cli:entry"}  # the command keeps its name


def test_every_install_line_of_the_readme_installs_this_checkout() -> None:
    installs = [c for c in _readme_commands() if re.match(r"(\S*/)?pip3? install\b", c)]
    assert len(installs) >= 4, "the README and the Install page show how to install, from the checkout and a wheel"
    for command in installs:
        targets = [a.strip("'\"") for a in command.split()[2:] if not a.startswith("-")]
        assert targets, command
        for target in targets:  # a path (the checkout, a wheel built from it), never a name on the index
            assert target.startswith((".", "dist/")), f"README installs {target!r} from the index: {command}"


async def test_version_prints_the_installed_distributions_version(tmp_path: Path) -> None:
    done = await batcher("--version", env=cli_env(None), cwd=tmp_path)
    assert done.code == 0, done.err
    assert done.out.strip() == f"batcher {_project()['version']}"
    assert list(tmp_path.iterdir()) == []


def test_a_source_tree_never_installed_reports_its_pyprojects_version(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert package.version() == f"{_project()['version']} (source tree, not installed)"


def test_a_wheel_built_from_the_checkout_installs_and_runs(tmp_path: Path) -> None:
    # build from a copy: the build must not write into the checkout other tests are reading
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("batcher", "migrations"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", str(src), "-w", str(tmp_path / "dist")], check=True, timeout=300)
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert [w.name for w in wheels] == [f"batcher_images-{_project()['version']}-py3-none-any.whl"]
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheels[0])], check=True, timeout=300)
    env = cli_env(None, PYTHONPATH=str(target))  # ahead of this checkout's editable install
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(target / "bin" / "batcher"), *args], env=env, cwd=work, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    version = run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"batcher {_project()['version']}"
    where = subprocess.run([sys.executable, "-c", "import batcher; print(batcher.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(target)), "the wheel's package, not the checkout's, was run"
    upgraded = run("db", "upgrade", "--db", "x.db")  # the migrations ship inside the wheel
    assert upgraded.returncode == 0, upgraded.stderr
    assert os.path.getsize(work / "x.db") > 0
