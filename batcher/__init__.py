"""batcher: resumable, rate-limited, cost-accounted batches of paid image generations, as a command and a library.

    import batcher

    result = batcher.run([{"prompt": "a red fox", "name": "fox"}], job="foxes", price_usd="0.05")
    result.succeeded, result.cost_usd, result.to_records()

`run` (blocking) and `arun` (async) drive a job; `estimate`, `retry`, `report` and `status` are the commands of
the same names. Errors are BatcherError and its kinds, each with the `message` and `exit_code` the CLI shows.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from batcher.errors import (
    AuthError,
    BatcherError,
    BudgetError,
    ConfigError,
    ExitCode,
    JobNotFoundError,
    ManifestError,
    OutputError,
    Problem,
    QuotaError,
    SpendCapError,
    StoreError,
    StoreMissingError,
    UnknownPriceError,
)

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


# The public Python API (batcher.api), loaded on first use: importing batcher (as the emulator and every command
# do) must not load the manifest checker, pydantic and the store.
_API = {
    "run": "batcher.api", "arun": "batcher.api", "estimate": "batcher.api", "retry": "batcher.api",
    "report": "batcher.api", "status": "batcher.api",
    "JobResult": "batcher.results", "TaskResult": "batcher.results", "Progress": "batcher.results",
    "Status": "batcher.results", "Estimate": "batcher.estimate", "RetryOutcome": "batcher.job_review",
}  # fmt: skip

if TYPE_CHECKING:
    from batcher.api import arun, estimate, report, retry, run, status
    from batcher.estimate import Estimate
    from batcher.job_review import RetryOutcome
    from batcher.results import JobResult, Progress, Status, TaskResult


class _Package(types.ModuleType):
    """The package, whose API functions are never replaced by the submodules of the same names (batcher.report,
    batcher.retry, batcher.estimate): those are reached by their full names (`from batcher.report import rows`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the import system binding a submodule onto its package
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batcher' has no attribute {name!r}")


__all__ = [
    "DISTRIBUTION",
    "AuthError",
    "BatcherError",
    "BudgetError",
    "ConfigError",
    "Estimate",
    "ExitCode",
    "JobNotFoundError",
    "JobResult",
    "ManifestError",
    "OutputError",
    "Problem",
    "Progress",
    "QuotaError",
    "RetryOutcome",
    "SpendCapError",
    "Status",
    "StoreError",
    "StoreMissingError",
    "TaskResult",
    "UnknownPriceError",
    "arun",
    "estimate",
    "report",
    "retry",
    "run",
    "status",
    "version",
]
