"""batcher: resumable, rate-limited, cost-accounted batches of LinkModel image generations."""

from __future__ import annotations

# The distribution's name (pyproject's [project] name): "batcher" on PyPI is an unrelated package. The import
# package and the command stay `batcher`.
DISTRIBUTION = "batcher-images"


def version() -> str:
    """The installed distribution's version; from a source tree that was never installed, its pyproject's."""
    from importlib import metadata
    from pathlib import Path  # here, not at the top: every import of batcher (the emulator's too) runs this file

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    import tomllib

    try:
        with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown (not installed)"
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return "unknown (not installed)"
    return f"{project['version']} (source tree, not installed)"
