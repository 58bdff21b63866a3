"""Chains in a manifest: a task whose input is another task's output (`from: NAME`). Pure bookkeeping.

A chained task's identity includes its parent's key, which is known only once the parent is built. So a task
that names a parent not seen yet waits here, and is built (and yielded) right after its parent: the stream of
specs always has parents before children, whatever order the manifest lists them in. What still waits when the
manifest ends names no task, or is part of a cycle; both are reported where its `from:` is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from batcher.manifest.taskfields import Problems, did_you_mean
from batcher.models import TaskSpec

MAX_HINT_NAMES = 10_000  # past this many names, "did you mean" would cost more than it helps


@dataclass(frozen=True)
class Waiting:
    """A task whose parent has not been built yet."""

    parent: str  # the parent's name, as `from:` gives it
    name: str | None  # its own name, when known before its key (for finding cycles)
    file: str  # where its `from:` is written
    line: int | None
    column: int | None
    build: Callable[[str], TaskSpec | None]  # the spec, given the parent's key (None: it had a problem)


class ChainBook:
    """Names → keys of the tasks built so far, and the tasks waiting for a parent."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # only named tasks: chains refer to tasks by name
        self.waiting: dict[str, list[Waiting]] = {}  # parent name → tasks waiting for it

    def key_of(self, name: str) -> str | None:
        return self.keys.get(name)

    def wait(self, task: Waiting) -> None:
        self.waiting.setdefault(task.parent, []).append(task)

    def built(self, spec: TaskSpec) -> Iterator[TaskSpec]:
        """Record a built spec; build and yield every task that waited for it, and theirs, depth first."""
        stack = [spec]
        while stack:
            done = stack.pop()
            if done.name is None:
                continue
            self.keys[done.name] = done.key
            for child in reversed(self.waiting.pop(done.name, [])):
                made = child.build(done.key)
                if made is not None:
                    yield made
                    stack.append(made)

    def report_unresolved(self, problems: Problems, names: Mapping[str, str]) -> None:
        """Every task still waiting: a `from:` naming no task, or a cycle. `names`: every task name seen (a
        name seen but never built belongs to a task with problems of its own). Tasks that wait behind one of
        these are not reported again: their root cause is."""
        by_name = {w.name: w for tasks in self.waiting.values() for w in tasks if w.name is not None}
        for tasks in self.waiting.values():
            for task in tasks:
                message = _why(task, by_name, names, self.keys)
                if message is not None:
                    problems.add(task.file, task.line, task.column, message)


def _why(task: Waiting, by_name: dict[str, Waiting], names: Mapping[str, str], built: Mapping[str, str]) -> str | None:
    parent = by_name.get(task.parent)
    if parent is None:
        if task.parent in names:
            return f"from: '{task.parent}' names a task that has problems of its own"
        known = list(built) + list(by_name)
        hint = did_you_mean(task.parent, known) if len(known) <= MAX_HINT_NAMES else ""
        return f"from: '{task.parent}' names no task of the manifest{hint}"
    path = [task]
    while parent is not None and all(parent is not t for t in path):
        path.append(parent)
        parent = by_name.get(parent.parent)
    if parent is task:  # back where it started: this task is on the cycle
        loop = " → ".join(f"'{t.name}'" for t in [*path, task])
        return f"from: '{task.parent}' makes a cycle ({loop}): no task of it can ever start"
    return None  # waits behind a cycle or a missing name, reported there
