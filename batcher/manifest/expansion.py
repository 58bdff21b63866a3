"""Validated plans → TaskSpecs, streaming: the per-task half of reading a manifest.

A plan is what loading the manifest settled once (templates compiled, defaults and column positions
resolved, everything static checked). Expanding it does only per-task work: fill templates, check what
only the filled-in values can show (an empty prompt, an unsafe filename, a duplicate name, two different
tasks writing one file), build the spec. CSV rows are read one at a time, never held.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batcher.catalog import DEFAULT_PROVIDER
from batcher.manifest.chains import ChainBook, Waiting
from batcher.manifest.csvsource import iter_records
from batcher.manifest.inputs import InputProblem, LocalImages, is_local
from batcher.manifest.sourcetext import SourceFault
from batcher.manifest.taskfields import (
    FILENAME_BUILTINS,
    KEY_CHARS,
    TEMPLATE_BUILTINS,
    Problems,
    choice_errors,
    image_count_problem,
    images_problem,
    name_problem,
    normalise_quality,
    normalise_size,
    seed_problem,
)
from batcher.manifest.templates import (
    UNSAFE_IN_NAME,
    Template,
    TemplateError,
    check_relative_path,
    check_rendered_filename,
)
from batcher.models import TaskSpec, from_ref, spec_key

AxisValue = str | Template | tuple[str, ...]


@dataclass(frozen=True)
class Axis:
    """One list of a matrix: a field (model, quality, size, seed, images, prompt) or a variable."""

    key: str
    values: tuple[AxisValue, ...]


@dataclass(frozen=True)
class TaskPlan:
    """A `tasks:` entry (no axes) or a `matrix:` (the cartesian product of its axes)."""

    file: str
    line: int
    column: int | None
    model: str
    quality: str
    size: str
    prompt: Template
    filename: Template
    name: Template | None
    images: tuple[str, ...] = ()
    seed: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()
    parent: Template | None = None  # `from:`, the name of the task whose output is the first input
    parent_at: tuple[int, int | None] | None = None  # line and column of `from:`

    @property
    def count(self) -> int:
        n = 1
        for axis in self.axes:
            n *= len(axis.values)
        return n


@dataclass(frozen=True)
class RowsPlan:
    """A CSV file: one task per data row. Cells of the special columns override the plan's defaults."""

    file: str  # the CSV's path as shown in messages
    path: Path
    delimiter: str | None
    header: tuple[str, ...]  # as first read, to notice a file changed before it is streamed
    columns: dict[str, int]  # field ("prompt", "size", ...) → column index
    variables: tuple[tuple[str, int], ...]  # variable name → column index
    prompt: Template | None
    filename: Template
    name: Template | None
    model: str
    quality: str
    size: str
    images: tuple[str, ...] = ()
    seed: str | None = None
    constants: dict[str, str] = field(default_factory=dict)  # variables given in the manifest, for every row
    header_line: int = 1
    parent: Template | None = None  # `from:` for every row (a `from` column overrides it)
    provider: str = DEFAULT_PROVIDER  # whose table a row's model, quality, size and images are checked against


Plan = TaskPlan | RowsPlan


class FilenameTable:
    """Which spec each filename was given to: an open-addressing hash table in flat arrays.

    16 bytes a slot where a dict of Python ints takes ~120 bytes an entry: ~40 MB, not ~130 MB, for a
    million distinct filenames. Filenames are compared by their 64-bit hash (a false match among a million
    names: ~1e-8) and specs by 32 bits of their key; names are casefolded since macOS and Windows ignore case.
    """

    _MAX_LOAD = 0.6

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self._mask = capacity - 1
        self._names = array("q", bytes(8 * capacity))  # 0: empty slot
        self._specs = array("I", bytes(4 * capacity))
        self._tasks = array("I", bytes(4 * capacity))
        self._count = 0
        self._limit = int(capacity * self._MAX_LOAD)

    def claim(self, filename: str, key: str, task: int) -> int | None:
        """Record that task number `task` (spec `key`) writes `filename`; the number of an earlier task that
        writes the same file for a different spec, if any."""
        name = hash(filename.casefold()) or 1
        spec = int(key[:8], 16)
        i = name & self._mask
        names = self._names
        while names[i]:
            if names[i] == name:
                return None if self._specs[i] == spec else self._tasks[i]
            i = (i + 1) & self._mask
        names[i], self._specs[i], self._tasks[i] = name, spec, task & 0xFFFFFFFF
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return None

    def _grow(self) -> None:
        old = zip(self._names, self._specs, self._tasks, strict=True)
        self._alloc(2 * (self._mask + 1))
        names, specs, tasks, mask = self._names, self._specs, self._tasks, self._mask
        for name, spec, task in old:
            if name:
                i = name & mask
                while names[i]:
                    i = (i + 1) & mask
                names[i], specs[i], tasks[i] = name, spec, task
                self._count += 1


Builtins = tuple[str, str, str, str, int, str]  # TEMPLATE_BUILTINS' values, in order
_USER_TEXT = frozenset({"seed", "variant", "name", "from"})  # built-ins a user wrote: made safe like variables


class Filenames:
    """One filename template, with the source of each placeholder settled once (not looked up per task)."""

    def __init__(self, template: Template, variables: frozenset[str] = frozenset()) -> None:
        self.template = template
        # A variable named like a field can only be a CSV column (`name`): it keeps its meaning there.
        own = {n for n in template.names if n in FILENAME_BUILTINS and n not in variables}
        # Per placeholder: its position in the built-in values (FILENAME_BUILTINS), or -1 for a variable
        # (built-ins win over variables of the same name, but for the field names above), and whether the value
        # is text a user wrote (a variable, the seed, a name) and so must be made safe; model, quality and size
        # are checked.
        self._slots = tuple(
            (FILENAME_BUILTINS.index(n) if n in own else -1, n, n not in own or n in _USER_TEXT) for n in template.order
        )
        self.unique = "index" in template.names  # every task gets a different name
        self.needs_name = "name" in own  # a task without a name cannot be named after it
        self.needs_from = "from" in own

    def missing(self, task_name: str | None, parent: str | None) -> str | None:
        """Why this task's file cannot be named by the template (it uses a field the task has not); None if it can."""
        if self.needs_name and task_name is None:
            return f"filename template '{self.template.text}' uses {{name}}, but the task has no name: give it name:"
        if self.needs_from and parent is None:
            return f"filename template '{self.template.text}' uses {{from}}, but the task has no input task (from:)"
        return None

    def render(self, builtins: tuple[str, str, str, str, int, str, str, str, str], variables: dict[str, str]) -> str:
        values: list[str | int] = [
            (variables[name] if slot < 0 else builtins[slot]).translate(UNSAFE_IN_NAME)  # type: ignore[union-attr]
            if unsafe
            else builtins[slot]
            for slot, name, unsafe in self._slots
        ]
        return self.template.render_values(values)


class _Run:
    """One pass over a manifest's tasks: numbering, and the checks that span tasks."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.index = 0
        self.names: dict[str, str] = {}  # task name → where first used
        self.filenames = FilenameTable()
        self.chains = ChainBook()  # names → keys, and chained tasks waiting for their parent
        self.local = LocalImages()  # local input files, each read and hashed once

    def make(
        self,
        file: str,
        line: int,
        column: int | None,
        model: str,
        quality: str,
        size: str,
        prompt: str,
        images: tuple[str, ...],
        seed: str | None,
        filename: Filenames | str,
        name: Template | None,
        variables: dict[str, str],
        parent: str | None = None,
        parent_at: tuple[int, int | None] | None = None,
    ) -> TaskSpec | None:
        """The spec, or None after recording why it cannot be one, or when it waits for its parent (`parent`:
        the task named by `from:`, whose line and column are `parent_at`). (Positional: this runs once a task.)"""
        self.index += 1
        prompt = prompt.strip()  # a YAML block scalar (`prompt: |`) ends in a line break the API need not see
        if not prompt:
            self.problems.add(file, line, column, "the prompt is empty")
            return None
        index = self.index
        if parent is not None:
            parent_key = self.chains.key_of(parent)
            if parent_key is None:  # not built yet: build this task right after it (chains.py)

                def build(key: str) -> TaskSpec | None:
                    return self._build(file, line, column, model, quality, size, prompt, (from_ref(key), *images),
                                       seed, filename, name, variables, index, parent)  # fmt: skip

                at_line, at_column = parent_at or (line, column)
                early = _early_name(name, variables, (model, quality, size, seed or "", index, ""))
                self.chains.wait(Waiting(parent, early, file, at_line, at_column, build))
                return None
            images = (from_ref(parent_key), *images)
        return self._build(file, line, column, model, quality, size, prompt, images, seed, filename, name, variables,
                           index, parent)  # fmt: skip

    def _build(
        self,
        file: str,
        line: int,
        column: int | None,
        model: str,
        quality: str,
        size: str,
        prompt: str,
        images: tuple[str, ...],
        seed: str | None,
        filename: Filenames | str,
        name: Template | None,
        variables: dict[str, str],
        index: int,
        parent: str | None,
    ) -> TaskSpec | None:
        key = spec_key(model, prompt, quality, size, images, seed)
        builtins = (model, quality, size, seed or "", index, key[:KEY_CHARS])
        try:
            task_name = None
            if name is not None:  # first: the filename may use it
                task_name = name.render({**variables, **dict(zip(TEMPLATE_BUILTINS, builtins, strict=True))})
            if isinstance(filename, Filenames):
                if (cannot := filename.missing(task_name, parent)) is not None:
                    self.problems.add(file, line, column, cannot)
                    return None
                rendered = filename.render((*builtins, seed or "", task_name or "", parent or ""), variables)
                why = check_rendered_filename(rendered)
            else:
                rendered = filename
                why = check_relative_path(rendered)
        except TemplateError as e:
            self.problems.add(file, line, column, str(e))
            return None
        if why:
            self.problems.add(file, line, column, f"filename '{rendered}' {why}")
            return None
        source = f"{file}:{line}"
        if task_name is not None and not self._name_ok(task_name, file, line, column, source):
            return None
        if not (isinstance(filename, Filenames) and filename.unique):
            other = self.filenames.claim(rendered, key, index)
            if other is not None:
                self.problems.add(
                    file, line, column,
                    f"filename '{rendered}' is also the file of task #{other}, which asks for a different image; "
                    "put {key} or a distinguishing variable in the filename",
                )  # fmt: skip
                return None
        spec = TaskSpec(
            model=model, prompt=prompt, quality=quality, size=size, filename=rendered, images=images, seed=seed,
            name=task_name, source=source, variables=variables,
        )  # fmt: skip
        spec.__dict__["key"] = key  # TaskSpec.key is a cached property: the key is already known
        return spec

    def _name_ok(self, name: str, file: str, line: int, column: int | None, source: str) -> bool:
        why = name_problem(name)
        if why:
            self.problems.add(file, line, column, why)
            return False
        first = self.names.get(name)
        if first is not None:
            self.problems.add(file, line, column, f"duplicate task name '{name}' (first used at {first})")
            return False
        self.names[name] = source
        return True


def generate(plans: tuple[Plan, ...], problems: Problems, *, complete: bool = True) -> Iterator[TaskSpec]:
    """Every valid task of the plans in order, except that a chained task comes right after its parent; problems
    go to `problems`, the caller decides what then. `complete`: the plans are the whole manifest, so a `from:`
    still unresolved at the end names no task (False: a partial check, where the name may be further on)."""
    run = _Run(problems)
    for plan in plans:
        for spec in _expand(plan, run) if isinstance(plan, TaskPlan) else _rows(plan, run):
            yield spec
            if spec.name is not None:
                yield from run.chains.built(spec)
    if complete:
        run.chains.report_unresolved(problems, run.names)


def _early_name(name: Template | None, variables: dict[str, str], builtins: Builtins) -> str | None:
    """A waiting task's own name, when its template does not need the key (to find cycles of waiting tasks)."""
    if name is None or "key" in name.names:
        return None
    try:
        return name.render({**variables, **dict(zip(TEMPLATE_BUILTINS, builtins, strict=True))})
    except TemplateError:
        return None


def _expand(plan: TaskPlan, run: _Run) -> Iterator[TaskSpec]:
    filenames = Filenames(plan.filename)
    for combo in itertools.product(*(axis.values for axis in plan.axes)):
        model, quality, size, prompt, images, seed = (
            plan.model,
            plan.quality,
            plan.size,
            plan.prompt,
            plan.images,
            plan.seed,
        )
        variables = dict(plan.variables)
        for axis, value in zip(plan.axes, combo, strict=True):
            if isinstance(value, Template):
                prompt = value
            elif isinstance(value, tuple):
                images = value
            elif axis.key == "model":
                model = value
            elif axis.key == "quality":
                quality = value
            elif axis.key == "size":
                size = value
            elif axis.key == "seed":
                seed = value
            else:
                variables[axis.key] = value
        try:
            text = prompt.render(variables)
            parent = plan.parent.render(variables) if plan.parent is not None else None
        except TemplateError as e:
            run.index += 1
            run.problems.add(plan.file, plan.line, plan.column, str(e))
            continue
        spec = run.make(
            plan.file, plan.line, plan.column, model, quality, size, text, images, seed, filenames, plan.name, variables,
            parent, plan.parent_at,
        )  # fmt: skip
        if spec is not None:
            yield spec


def _rows(plan: RowsPlan, run: _Run) -> Iterator[TaskSpec]:
    records = iter_records(plan.path, plan.file, plan.delimiter)
    try:
        first = next(records, None)
        if first is None or tuple(first[1]) != plan.header:
            run.problems.add(plan.file, first[0] if first else None, None, "the file changed while being read")
            return
        yield from _row_tasks(plan, records, run)
    except SourceFault as fault:
        run.problems.add_problem(fault.problem)
    finally:
        records.close()


def _row_tasks(plan: RowsPlan, records: Iterator[tuple[int, list[str]]], run: _Run) -> Iterator[TaskSpec]:
    width = len(plan.header)
    cols = plan.columns
    c_prompt, c_model, c_quality, c_size = (cols.get(k) for k in ("prompt", "model", "quality", "size"))
    c_filename, c_seed, c_images, c_from = (cols.get(k) for k in ("filename", "seed", "images", "from"))
    problems, file, provider = run.problems, plan.file, plan.provider
    filenames = Filenames(plan.filename, frozenset(n for n, _ in plan.variables) | frozenset(plan.constants))
    for line, cells in records:
        if len(cells) != width:
            if len(cells) > width and "".join(cells[width:]).strip():
                run.index += 1
                problems.add(
                    file,
                    line,
                    None,
                    f"the row has {len(cells)} fields but the header has {width} "
                    "columns (a value holding the delimiter must be quoted)",
                )
                continue
            cells = (cells + [""] * width)[:width]
        variables = {name: cells[i].strip() for name, i in plan.variables}
        if plan.constants:
            variables = plan.constants | variables
        prompt = cells[c_prompt].strip() if c_prompt is not None else ""
        if not prompt and plan.prompt is not None:
            try:
                prompt = plan.prompt.render(variables)
            except TemplateError as e:
                run.index += 1
                problems.add(file, line, None, str(e))
                continue
        model, quality, size = plan.model, plan.quality, plan.size
        if c_model is not None or c_quality is not None or c_size is not None:
            model = (cells[c_model].strip() if c_model is not None else "") or model
            quality = normalise_quality(cells[c_quality]) if c_quality is not None else ""
            quality = quality or plan.quality
            size = (normalise_size(cells[c_size], provider) if c_size is not None else "") or size
            errors = choice_errors(model, quality, size, provider)
            if errors:
                run.index += 1
                for error in errors:
                    problems.add(file, line, None, error.message)
                continue
        seed, images, why = plan.seed, plan.images, None
        parent = cells[c_from].strip() or None if c_from is not None else None
        if parent is None and plan.parent is not None:
            try:
                parent = plan.parent.render(variables)
            except TemplateError as e:
                why = str(e)
        if c_seed is not None and cells[c_seed].strip():
            seed = cells[c_seed].strip()
            why = why or seed_problem(seed)
        if c_images is not None and cells[c_images].strip():
            images = tuple(cells[c_images].split())
            why = why or images_problem(images, chained=parent is not None, model=model, provider=provider)
            if not why:
                images, why = local_refs(images, plan.path.parent, run.local)
        elif images:  # the manifest's images, checked at load but not against this row's model and parent
            why = why or image_count_problem(len(images), chained=parent is not None, model=model, provider=provider)
        filename: Filenames | str = filenames
        if c_filename is not None and cells[c_filename].strip():
            filename = cells[c_filename].strip()
        if why:
            run.index += 1
            problems.add(file, line, None, why)
            continue
        spec = run.make(file, line, None, model, quality, size, prompt, images, seed, filename, plan.name, variables,
                        parent)  # fmt: skip
        if spec is not None:
            yield spec


def local_refs(images: tuple[str, ...], base_dir: Path, local: LocalImages) -> tuple[tuple[str, ...], str | None]:
    """Input images with local files (relative to `base_dir`) as `file:` references, or why that failed."""
    try:
        return tuple(local.ref(i, base_dir) if is_local(i) else i for i in images), None
    except InputProblem as problem:
        return images, problem.message
