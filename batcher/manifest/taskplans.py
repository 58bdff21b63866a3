"""`tasks:`, `matrix:` and `rows:` (and a CSV manifest's header) → plans, every static fault located.

The load-time half of reading a manifest: types, known models/qualities/sizes, templates that compile
and use only defined variables, CSV headers. What only filled-in values can show is left to expansion.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from batcher.catalog import DEFAULT_PROVIDER
from batcher.manifest.expansion import Axis, RowsPlan, TaskPlan, local_refs
from batcher.manifest.inputs import LocalImages
from batcher.manifest.rowplans import csv_columns, read_header
from batcher.manifest.taskfields import (
    FIELD_KEYS,
    FILENAME_BUILTINS,
    TEMPLATE_BUILTINS,
    Problems,
    choice_errors,
    did_you_mean,
    image_count_problem,
    images_problem,
    name_problem,
    normalise_choice,
    seed_problem,
)
from batcher.manifest.templates import Template, TemplateError, check_filename_template, compile_template
from batcher.manifest.yamlsource import Loc, YMap, YNode, YScalar, YSeq, kind

MAX_MATRIX_TASKS = 1_000_000  # one matrix; past this a typo (a long list pasted twice) is the likelier cause
_CHOICES = ("model", "quality", "size")


@lru_cache(maxsize=1024)  # the same variable names recur in every task of a long list
def _field_typo(key: str) -> str:
    return did_you_mean(key, FIELD_KEYS, cutoff=0.8)


@dataclass(frozen=True)
class Given:
    """A model, quality or size as written, and where (None: the built-in default)."""

    text: str
    loc: Loc | None
    level: int  # 0 built-in, 1 the job's default, 2 the task/matrix/rows entry itself


@dataclass(frozen=True)
class Defaults:
    """What the job sets for every task."""

    model: Given
    quality: Given
    size: Given
    prompt: Template | None
    filename: Template
    provider: str = DEFAULT_PROVIDER  # whose table every model, quality, size and image count is checked against


class PlanBuilder:
    """Builds the plans of one YAML manifest (or of a CSV manifest's single file), recording problems."""

    def __init__(self, file: str, problems: Problems, defaults: Defaults, base_dir: Path) -> None:
        self.file = file
        self.problems = problems
        self.d = defaults
        self.base_dir = base_dir  # `rows:` paths and local input images are relative to the manifest's folder
        self.local = LocalImages()
        self.provider = defaults.provider

    def _at(self, loc: Loc | None, message: str) -> None:
        self.problems.add(self.file, loc.line if loc else None, loc.column if loc else None, message)

    # --- reading values ------------------------------------------------------------------------------

    def text(self, node: YNode, what: str) -> str | None:
        if isinstance(node, YScalar) and not node.is_null:
            return node.text
        self._at(
            node.loc,
            f"{what} has no value" if isinstance(node, YScalar) else f"{what} must be a single value, not {kind(node)}",
        )
        return None

    def template(self, node: YNode, what: str) -> Template | None:
        text = self.text(node, what)
        if text is None:
            return None
        try:
            return compile_template(text)
        except TemplateError as e:
            self._at(node.loc, f"{what} template '{text}': {e}")
            return None

    def filename_template(self, node: YNode) -> Template | None:
        template = self.template(node, "filename")
        why = template is not None and check_filename_template(template)
        if template is not None and why:
            self._at(node.loc, f"filename template '{template.text}' {why}")
            return None
        return template

    def _images(self, node: YNode) -> tuple[str, ...] | None:
        items = node.items if isinstance(node, YSeq) else [node]
        texts = [self.text(item, "an image") for item in items]
        if any(t is None for t in texts):
            return None
        images = tuple(t for t in texts if t is not None)
        why = images_problem(images, provider=self.provider)  # each model's own limit: _check_image_counts
        if not why:
            images, why = local_refs(images, self.base_dir, self.local)
        if why:
            self._at(node.loc, why)
            return None
        return images

    def _seed(self, node: YNode) -> str | None:
        seed = self.text(node, "seed")
        why = seed is not None and seed_problem(seed)
        if why:
            self._at(node.loc, why)
            return None
        return seed

    # --- tasks and matrices --------------------------------------------------------------------------

    def tasks(self, node: YNode) -> list[TaskPlan]:
        if not isinstance(node, YSeq):
            self._at(node.loc, f"tasks must be a list (lines starting with '- '), not {kind(node)}")
            return []
        plans = []
        for item in node.items:
            if isinstance(item, YScalar) and not item.is_null:  # `- "A red mug"`: a task that is only a prompt
                item = YMap({"prompt": item}, {"prompt": item.loc}, item.loc)
            if not isinstance(item, YMap):
                self._at(item.loc, f"a task must be a mapping (prompt: ..., size: ...) or a prompt, not {kind(item)}")
                continue
            plan = self.entry(item, matrix=False)
            if plan is not None:
                plans.append(plan)
        return plans

    def matrices(self, node: YNode) -> list[TaskPlan]:
        items = node.items if isinstance(node, YSeq) else [node]
        plans = []
        for item in items:
            if not isinstance(item, YMap):
                self._at(
                    item.loc,
                    f"matrix must be a mapping of value lists (animal: [cat, dog]), or a list of "
                    f"such mappings, not {kind(item)}",
                )
                continue
            plan = self.entry(item, matrix=True)
            if plan is not None:
                plans.append(plan)
        return plans

    def entry(self, m: YMap, *, matrix: bool) -> TaskPlan | None:
        """One task (matrix=False) or one matrix: lists in a matrix are axes, scalars are constants."""
        before = len(self.problems.kept)
        what = "matrix" if matrix else "task"
        choices: dict[str, list[Given]] = {"model": [self.d.model], "quality": [self.d.quality], "size": [self.d.size]}
        axes: list[Axis] = []
        variables: dict[str, str] = {}
        own_prompt: Template | None = None
        prompt_axis: list[Template] = []
        filename, name, seed = self.d.filename, None, None
        images: tuple[str, ...] = ()
        parent: Template | None = None
        templates_loc: dict[str, Loc] = {}
        if "seed" in m.items and "variant" in m.items:
            self._at(m.key_locs["variant"], "give either seed or variant, not both")
        for key, node in m.items.items():
            as_axis = matrix and isinstance(node, YSeq)
            if as_axis and not node.items:  # type: ignore[union-attr]
                self._at(node.loc, f"'{key}' is an empty list: a matrix axis needs at least one value")
                continue
            if key in _CHOICES:
                values = self._choice_values(key, node, as_axis)
                if values:
                    choices[key] = values
                    if as_axis:
                        axes.append(Axis(key, tuple(v.text for v in values)))
            elif key == "prompt":
                templates_loc["prompt"] = node.loc
                if as_axis:
                    assert isinstance(node, YSeq)
                    prompt_axis = [t for t in (self.template(i, "prompt") for i in node.items) if t is not None]
                    axes.append(Axis("prompt", tuple(prompt_axis)))
                else:
                    own_prompt = self.template(node, "prompt")
            elif key == "filename":
                templates_loc["filename"] = node.loc
                filename = self.filename_template(node) or filename
            elif key == "name":
                templates_loc["name"] = node.loc
                name = self.template(node, "name")
                if name is not None and not name.names and (why := name_problem(name.text)):
                    self._at(node.loc, why)
            elif key == "from":
                templates_loc["from"] = node.loc
                parent = self._parent(node)
            elif key == "images":
                if as_axis and all(isinstance(i, YSeq) for i in node.items):  # type: ignore[union-attr]
                    assert isinstance(node, YSeq)
                    lists = [self._images(i) for i in node.items]
                    axes.append(Axis("images", tuple(x for x in lists if x is not None)))
                else:
                    images = self._images(node) or ()
            elif key in ("seed", "variant"):
                if as_axis:
                    assert isinstance(node, YSeq)
                    seeds = [self._seed(i) for i in node.items]
                    axes.append(Axis("seed", tuple(s for s in seeds if s is not None)))
                else:
                    seed = self._seed(node)
            elif as_axis:
                assert isinstance(node, YSeq)
                texts = [self.text(i, f"a value of '{key}'") for i in node.items]
                axes.append(Axis(key, tuple(t for t in texts if t is not None)))
            elif isinstance(node, YSeq) and not matrix:
                self._at(node.loc, f"variable '{key}' must be a single value, not a list (a list of values makes "
                         "one task each only in matrix:)")  # fmt: skip
            else:
                value = self.text(node, f"variable '{key}'")
                if value is not None:
                    variables[key] = value
        prompt = own_prompt or (prompt_axis[0] if prompt_axis else None) or self.d.prompt
        if prompt is None and "prompt" not in m.items:
            self._at(m.loc, f"the {what} has no prompt (and the job sets no top-level prompt template)")
        self._check_choices(choices, m.loc)
        # Every other key defines a variable, even one whose value was refused above: one problem per fault.
        names = {key for key in m.items if key not in FIELD_KEYS}
        prompts: list[Template | None] = [own_prompt] if own_prompt else [*prompt_axis] or [self.d.prompt]
        templates: list[tuple[str, Template | None]] = [("prompt", t) for t in prompts]
        templates += (
            [("filename", filename)] + ([("name", name)] if name else []) + ([("from", parent)] if parent else [])
        )
        used: set[str] = set()
        for role, template in templates:
            if template is not None:
                used |= template.names
                self._check_defined(template, role, names, templates_loc.get(role), m.loc)
        self._check_typos(m, set(variables) - used)
        if "images" in m.items:
            image_lists = [images] + [v for a in axes if a.key == "images" for v in a.values if isinstance(v, tuple)]
            self._check_image_counts(m.items["images"].loc, image_lists, choices["model"], parent is not None)
        if len(self.problems.kept) != before or prompt is None:
            return None
        at = templates_loc.get("from")
        plan = TaskPlan(
            file=self.file, line=m.loc.line, column=m.loc.column, model=choices["model"][0].text,
            quality=choices["quality"][0].text, size=choices["size"][0].text, prompt=prompt, filename=filename,
            name=name, images=images, seed=seed, variables=variables, axes=tuple(axes), parent=parent,
            parent_at=(at.line, at.column) if at else None,
        )  # fmt: skip
        if plan.count > MAX_MATRIX_TASKS:
            self._at(m.loc, f"the matrix expands to {plan.count:,} tasks, more than {MAX_MATRIX_TASKS:,}")
            return None
        return plan

    def _parent(self, node: YNode) -> Template | None:
        """`from:`: the name (a template) of the task whose output is this task's first input."""
        parent = self.template(node, "from")
        if parent is not None and not parent.names and (why := name_problem(parent.text)):
            self._at(node.loc, f"from: {why}")
            return None
        return parent

    def _check_image_counts(self, at: Loc, lists: list[tuple[str, ...]], models: list[Given], chained: bool) -> None:
        """Each list of input images against the limit of each model it may go to (`chained`: with `from:`, the
        parent's output is one more input)."""
        for images, model in itertools.product(lists, models):
            if images and (why := image_count_problem(len(images), chained=chained, model=model.text,
                                                      provider=self.provider)):  # fmt: skip
                self._at(at, why)

    def _choice_values(self, key: str, node: YNode, as_axis: bool) -> list[Given]:
        items = node.items if as_axis and isinstance(node, YSeq) else [node]
        out = []
        for item in items:
            text = self.text(item, key)
            if text is not None:
                out.append(Given(normalise_choice(key, text, self.provider), item.loc, 2))
        return out if len(out) == len(items) else []

    def _check_choices(self, choices: dict[str, list[Given]], fallback: Loc) -> None:
        for model, quality, size in itertools.product(choices["model"], choices["quality"], choices["size"]):
            for error in choice_errors(model.text, quality.text, size.text, self.provider):
                given = {"model": model, "quality": quality, "size": size}[error.field]
                if error.field != "model" and model.level > given.level:
                    given = model  # the task chose the model; the default quality/size does not fit it
                self._at(given.loc or fallback, error.message)

    def _check_defined(self, template: Template, role: str, names: set[str], loc: Loc | None, entry: Loc) -> None:
        builtins = {"prompt": (), "from": (), "name": TEMPLATE_BUILTINS}.get(role, FILENAME_BUILTINS)
        allowed = names | set(builtins)
        for missing in sorted(template.names - allowed):
            hint = did_you_mean(missing, allowed)
            if role == "prompt" and missing in FIELD_KEYS:
                hint += f" ('{missing}' is a task field; a prompt can use only variables)"
            whose = "" if loc else "the job's "
            defined = f"variables: {', '.join(sorted(names)) or 'none'}"
            if builtins:
                defined += f"; built-ins: {', '.join(sorted(set(builtins) - names))}"
            self._at(
                loc or entry,
                f"undefined variable '{missing}' in {whose}{role} template '{template.text}'{hint}; {defined}",
            )

    def _check_typos(self, m: YMap, unused: set[str]) -> None:
        """A variable no template uses, spelled almost like a field, is a misspelt field."""
        for key in sorted(unused):
            hint = _field_typo(key)
            if hint:
                self._at(
                    m.key_locs.get(key, m.loc),
                    f"unknown key '{key}'{hint}: other keys are template variables, but no template uses this one",
                )

    # --- CSV files -----------------------------------------------------------------------------------

    def rows(self, node: YNode) -> list[tuple[RowsPlan, bool]]:
        """Plans for `rows:` (a file name, a mapping, or a list of them), each with whether it has data rows."""
        items = node.items if isinstance(node, YSeq) else [node]
        out = []
        for item in items:
            if isinstance(item, YScalar) and not item.is_null:
                item = YMap({"file": item}, {"file": item.loc}, item.loc)
            if not isinstance(item, YMap):
                self._at(
                    item.loc, f"rows must be a CSV file name or a mapping (file: ..., prompt: ...), not {kind(item)}"
                )
                continue
            plan = self._rows_entry(item)
            if plan is not None:
                out.append(plan)
        return out

    def _rows_entry(self, m: YMap) -> tuple[RowsPlan, bool] | None:
        before = len(self.problems.kept)
        if "file" not in m.items:
            self._at(m.loc, "rows needs file: (the CSV file's path, relative to the manifest)")
            return None
        name = self.text(m.items["file"], "rows file")
        delimiter = m.items.get("delimiter")
        sep = self.text(delimiter, "delimiter") if delimiter else None
        if sep is not None and len(sep.replace("\\t", "\t")) != 1:
            self._at(delimiter.loc if delimiter else m.loc, "delimiter must be one character, e.g. ';' or '\\t'")
        if name is None:
            return None
        csv_file = str(Path(self.file).parent / name)
        header = self._read_header(name, csv_file, sep.replace("\\t", "\t") if sep else None, m.items["file"].loc)
        if header is None:
            return None
        line, cells, has_rows = header
        columns, variables = csv_columns(cells, csv_file, line, self.problems)
        given: dict[str, Given] = {"model": self.d.model, "quality": self.d.quality, "size": self.d.size}
        prompt, filename, task_name, seed = self.d.prompt, self.d.filename, None, None
        parent: Template | None = None
        images: tuple[str, ...] = ()
        constants: dict[str, str] = {}
        templates_loc: dict[str, Loc] = {}
        for key, node in m.items.items():
            if key in ("file", "delimiter"):
                continue
            if key in _CHOICES:
                values = self._choice_values(key, node, False)
                given[key] = values[0] if values else given[key]
            elif key == "prompt":
                prompt, templates_loc[key] = self.template(node, "prompt"), node.loc
            elif key == "filename":
                filename, templates_loc[key] = self.filename_template(node) or filename, node.loc
            elif key == "name":
                task_name, templates_loc[key] = self.template(node, "name"), node.loc
            elif key == "from":
                parent, templates_loc[key] = self._parent(node), node.loc
            elif key == "images":
                images = self._images(node) or ()
            elif key in ("seed", "variant"):
                seed = self._seed(node)
            else:
                value = self.text(node, f"variable '{key}'")
                if value is not None:
                    constants[key] = value
        if "prompt" not in columns and prompt is None:
            self._at(
                m.loc,
                f"{csv_file} has no 'prompt' column and no prompt template is given "
                '(rows: {file: ..., prompt: "... {column} ..."})',
            )
        self._check_choices({k: [v] for k, v in given.items()}, m.loc)  # images: per row, as a row may change the model
        names = {n for n, _ in variables} | set(constants)
        for role, template in (("prompt", prompt), ("filename", filename), ("name", task_name), ("from", parent)):
            if template is not None:
                self._check_defined(template, role, names, templates_loc.get(role), m.loc)
        if len(self.problems.kept) != before:
            return None
        plan = RowsPlan(
            file=csv_file, path=self.base_dir / name, delimiter=sep.replace("\\t", "\t") if sep else None,
            header=tuple(cells), columns=columns, variables=tuple(variables), prompt=prompt, filename=filename,
            name=task_name, model=given["model"].text, quality=given["quality"].text, size=given["size"].text,
            images=images, seed=seed, constants=constants, header_line=line, parent=parent, provider=self.provider,
        )  # fmt: skip
        return plan, has_rows

    def _read_header(
        self, name: str, csv_file: str, delimiter: str | None, loc: Loc | None
    ) -> tuple[int, list[str], bool] | None:
        path = self.base_dir / name
        if not path.is_file():
            state = "is not a file" if path.exists() else "not found"
            self._at(loc, f"rows file '{name}' {state} (looked for {path.absolute()})")
            return None
        return read_header(path, csv_file, delimiter, self.problems)
