"""Tasks given in code (a list of dicts) → a checked Manifest, through the same checks as a YAML manifest.

The list and the job-wide settings are written out as one YAML document (JSON-style, one field a line), checked
by the loader like any manifest file, and every problem found is mapped back from its line to the task (by
index and name) and the field it belongs to. Nothing is written to disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.errors import ManifestError, Problem
from batcher.manifest.loader import Manifest, load_manifest_text

DEFAULT_JOB = "tasks"  # the job's name when neither `job` nor a `job` setting names it
_Where = tuple[int | None, str]  # (task index or None for a setting, field)


def _value(value: Any) -> str:
    """One value as YAML flow text on one line; numbers as written (Decimal exactly)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, Decimal | int | float):
        return str(Decimal(repr(value)) if isinstance(value, float) else value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value if isinstance(value, str) else os.fspath(value) if isinstance(value, Path) else str(value),
                      ensure_ascii=False)  # fmt: skip


def _label(index: int, task: Mapping[str, Any]) -> str:
    name = task.get("name")
    return f"task {index}" + (f" ({name})" if isinstance(name, str) and name else "")


def _document(
    tasks: Sequence[tuple[int, Mapping[str, Any]]], settings: Mapping[str, Any]
) -> tuple[str, dict[int, _Where]]:
    """The YAML text, and for each of its lines the task (None: a setting) and field it holds."""
    lines: list[str] = ["{"]
    where: dict[int, _Where] = {}
    for key, value in settings.items():
        where[len(lines) + 1] = (None, key)
        lines.append(f"{json.dumps(key)}: {_value(value)},")
    where[len(lines) + 1] = (None, "tasks")
    lines.append('"tasks": [')
    for i, task in tasks:
        where[len(lines) + 1] = (i, "")
        lines.append("{")
        for key, value in task.items():
            where[len(lines) + 1] = (i, str(key))
            lines.append(f"{json.dumps(str(key))}: {_value(value)},")
        lines.append("},")
    lines += ["]", "}"]
    return "\n".join(lines) + "\n", where


def tasks_manifest(tasks: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], job: str | None = None) -> Manifest:
    """A manifest of `tasks` (each a manifest row's fields and template variables) with the job-wide `settings`
    (`model`, `size`, `output`, `price_usd`, ...). Relative paths are taken from the current folder. Raises one
    ManifestError listing every problem, each naming the task (index and name) or setting and the field."""
    settings = dict(settings)
    if job is not None:
        settings["job"] = job
    name = str(settings.get("job") or DEFAULT_JOB)
    if isinstance(tasks, str | bytes | Mapping):
        raise ManifestError([Problem("tasks", None, None, "must be a list of dicts (or a manifest's path)")])
    shape: list[Problem] = []
    good: list[tuple[int, Mapping[str, Any]]] = []
    for i, t in enumerate(tasks):
        if not isinstance(t, Mapping):
            shape.append(Problem(f"task {i}", None, None, "must be a dict of a manifest row's fields"))
        elif not all(isinstance(k, str) for k in t):
            shape.append(Problem(_label(i, t), None, None, "its keys must be text"))
        else:
            good.append((i, t))
    text, where = _document(good, settings)
    try:
        manifest = load_manifest_text(text, Path.cwd() / f"{name}.tasks")
    except ManifestError as e:
        raise ManifestError(shape + [_mapped(p, tasks, where) for p in e.problems]) from None
    if shape:
        raise ManifestError(shape)
    return manifest


def _mapped(problem: Problem, tasks: Sequence[Mapping[str, Any]], where: dict[int, _Where]) -> Problem:
    at = where.get(problem.line) if problem.line is not None else None
    if at is None:
        return Problem("tasks", None, None, problem.message)
    index, field = at
    if index is None:
        return Problem(f"setting {field}", None, None, problem.message)
    message = f"{field}: {problem.message}" if field else problem.message
    return Problem(_label(index, tasks[index]), None, None, message)
