"""Manifest files (YAML or CSV) → job settings and a stream of validated TaskSpecs.

`load_manifest` reads and checks everything but the rows of CSV files (and the expansion of very large
matrices): the YAML document, the settings, every CSV header. `Manifest.specs()` then streams the tasks,
reading CSV files row by row, and raises ManifestError at the end if any row was bad. Every problem is
reported with its file, line and (for YAML) column. The layers below, bottom up: sourcetext (bytes →
checked text), yamlsource / csvsource (text → located values), templates, taskfields (single-field
checks), taskplans (values → plans, at load) and expansion (plans → specs, streaming).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batcher.catalog import DEFAULT_MODEL, DEFAULT_PROVIDER, DEFAULT_QUALITY, DEFAULT_SIZE, PROVIDERS, unknown_provider
from batcher.errors import ManifestError, Problem
from batcher.manifest.expansion import Plan, RowsPlan, TaskPlan, generate
from batcher.manifest.rowplans import csv_columns, read_header
from batcher.manifest.sourcetext import SourceFault, read_text
from batcher.manifest.taskfields import (
    DEFAULT_FILENAME,
    Problems,
    choice_errors,
    did_you_mean,
    job_name_problem,
    normalise_choice,
)
from batcher.manifest.taskplans import Defaults, Given, PlanBuilder
from batcher.manifest.templates import Template, TemplateError, check_filename_template, compile_template
from batcher.manifest.yamlsource import Loc, YMap, YNode, locate, parse_yaml, to_plain
from batcher.models import BATCH_MAX_BYTES_LIMIT, BATCH_MAX_REQUESTS_LIMIT, ROUTES, JobSettings, TaskSpec

EAGER_CHECK_TASKS = 100_000  # in-document tasks (tasks:, matrix:) fully checked at load when no more than this
_SOURCES = ("tasks", "matrix", "rows")
CSV_SUFFIXES = (".csv", ".tsv")


# --- the public API -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A loaded, checked manifest: the job's settings and the way to its tasks."""

    path: Path
    settings: JobSettings
    plans: tuple[Plan, ...] = field(default=(), repr=False, compare=False)  # what specs() expands

    def source_bytes(self) -> int:
        """The size of the files its tasks come from: the manifest and its `rows:` CSV files."""
        files = {self.path, *(plan.path for plan in self.plans if isinstance(plan, RowsPlan))}
        return sum(os.path.getsize(f) for f in files if os.path.exists(f))

    def specs(self) -> Iterator[TaskSpec]:
        """Every task in manifest order, streaming (CSV files are re-read on each call).

        Identical tasks are yielded as often as they appear. Bad tasks are not yielded; when the stream is
        exhausted, ManifestError lists them all.
        """
        problems = Problems()
        count = 0
        for spec in generate(self.plans, problems):
            count += 1
            yield spec
        if not problems and count == 0:
            problems.add(str(self.path), None, None, "the manifest has no tasks")
        if problems:
            raise problems.error()


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and check a manifest (`*.csv`/`*.tsv`: a CSV manifest, anything else: YAML).

    Raises ManifestError listing every problem found.
    """
    file = os.fspath(path)
    problems = Problems()
    p = Path(file)
    try:
        if p.suffix.lower() in CSV_SUFFIXES:
            manifest = _load_csv(p, file, problems)
        else:
            manifest = _load_yaml(p, file, problems)
    except SourceFault as fault:
        problems.add_problem(fault.problem)
        manifest = None
    if problems or manifest is None:
        raise problems.error()
    return manifest


def output_dir(manifest: Path, folder: str) -> str:
    """The job's output directory, absolute: a relative one is relative to the manifest's folder (as `images:`
    and `rows:` paths are), so the job writes to one place whatever folder it is run from. A bucket URI
    (`s3://BUCKET/PREFIX`, `gs://...`) is kept as it is."""
    if folder.startswith(("s3://", "gs://")):
        return folder.rstrip("/")
    return os.path.abspath(os.path.join(manifest.parent, os.path.expanduser(folder)))


# --- a CSV manifest -----------------------------------------------------------------------------------


def _load_csv(p: Path, file: str, problems: Problems) -> Manifest | None:
    job = p.stem
    if why := job_name_problem(job):
        problems.add(file, None, None, f"{why}; rename the file")
    header = read_header(p, file, None, problems)
    if header is None:
        return None
    line, cells, has_rows = header
    columns, variables = csv_columns(cells, file, line, problems)
    if "prompt" not in columns:
        named = ", ".join(c.strip() for c in cells if c.strip()) or "none"
        problems.add(file, line, None, f"the header has no 'prompt' column (its columns: {named})")
    if not has_rows:
        problems.add(file, line, None, "the file has a header but no data rows")
    plan = RowsPlan(
        file=file, path=p, delimiter=None, header=tuple(cells), columns=columns, variables=tuple(variables),
        prompt=None, filename=compile_template(DEFAULT_FILENAME), name=None, model=DEFAULT_MODEL,
        quality=DEFAULT_QUALITY, size=DEFAULT_SIZE, header_line=line,
    )  # fmt: skip
    return Manifest(p, JobSettings(name=job, output_dir=output_dir(p, f"out/{job}")), (plan,))


# --- a YAML manifest: settings -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Output(_Strict):
    dir: str | None = None
    filename: str | None = None


class _RateLimit(_Strict):
    requests_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_in_flight: int | None = Field(default=None, ge=1)
    max_connections: int | None = Field(default=None, ge=1)


class _Retries(_Strict):
    max_attempts: int | None = Field(default=None, ge=1)


class _Batch(_Strict):
    """How a `route: batch` job splits its requests into batches, and what one image costs by batch."""

    max_requests: int | None = Field(default=None, ge=1, le=BATCH_MAX_REQUESTS_LIMIT)
    max_bytes: int | None = Field(default=None, ge=1, le=BATCH_MAX_BYTES_LIMIT)  # the Files API's limit
    price_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)  # overrides the catalog's
    # how long a batch may be missing from the account's listing after an unanswered create, seconds
    create_grace_s: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)
    staging: str | None = None  # gs://BUCKET/PREFIX: where a batch's files are staged (Vertex AI); see _staging


class _Settings(_Strict):
    """The job-wide part of a YAML manifest. Values arrive as the text written, so pydantic parses the
    numbers (exactly: `0.05` is Decimal('0.05'))."""

    job: str | None = None
    description: str | None = None
    provider: str | None = None  # a key of catalog.PROVIDERS; checked in _provider, to name the file and line
    model: str | None = None
    quality: str | None = None
    size: str | None = None
    prompt: str | None = None
    output: _Output | None = None
    price_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)  # per image, overrides the model's price
    budget_usd: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)
    rate_limit: _RateLimit | None = None
    retries: _Retries | None = None
    route: str | None = None  # one of models.ROUTES; checked in _route, to name the file and line
    batch: _Batch | None = None


TOP_KEYS = (*_Settings.model_fields, *_SOURCES)
_KEYS_OF: dict[str, tuple[str, ...]] = {
    "output": tuple(_Output.model_fields),
    "rate_limit": tuple(_RateLimit.model_fields),
    "retries": tuple(_Retries.model_fields),
    "batch": tuple(_Batch.model_fields),
}
_PYDANTIC_MESSAGES = {
    "string_type": "must be text",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "decimal_parsing": "must be a number",
    "decimal_type": "must be a number",
    "finite_number": "must be a finite number",
    "model_type": "must be a mapping (indented `key: value` lines)",
    "dict_type": "must be a mapping (indented `key: value` lines)",
}


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _settings(root: YMap, file: str, problems: Problems) -> _Settings:
    """The settings; a faulty one is reported and left out, so the tasks are still checked."""
    data = {k: to_plain(v) for k, v in root.items.items() if k in _Settings.model_fields}
    if isinstance(data.get("output"), str):
        data["output"] = {"dir": data["output"]}  # `output: out/spring` is short for `output: {dir: ...}`
    try:
        return _Settings.model_validate(data)
    except ValidationError as err:
        faulty = {str(e["loc"][0]) for e in err.errors()}
        for e in err.errors():
            loc = tuple(e["loc"])
            key = ".".join(str(part) for part in loc)
            if e["type"] == "extra_forbidden":
                allowed = _KEYS_OF.get(str(loc[0]), ())
                where = locate(root, loc, key=True)
                message = (
                    f"unknown key '{loc[-1]}' in {loc[0]}{did_you_mean(str(loc[-1]), allowed)}; "
                    f"allowed: {', '.join(allowed)}"
                )
            else:
                where = locate(root, loc)
                ctx = e.get("ctx", {})
                if e["type"] == "greater_than_equal":
                    what = f"must be at least {ctx.get('ge'):g}"
                elif e["type"] == "greater_than":
                    what = f"must be greater than {ctx.get('gt'):g}"
                elif e["type"] == "less_than_equal":
                    what = f"must be at most {ctx.get('le'):,}"  # 2,000,000,000, not 2e+09
                else:
                    what = _PYDANTIC_MESSAGES.get(e["type"], e["msg"])
                message = f"{key} {what}, not {_shown(e.get('input'))}"
            problems.add(file, where.line, where.column, message)
        return _Settings.model_validate({k: v for k, v in data.items() if k not in faulty})


# --- a YAML manifest ------------------------------------------------------------------------------------


def load_manifest_text(text: str, path: str | os.PathLike[str]) -> Manifest:
    """Check a YAML manifest given as text, as if it were the file `path` (its folder anchors relative paths;
    its stem is the job's name when the text sets none). Raises ManifestError listing every problem."""
    file = os.fspath(path)
    problems = Problems()
    manifest = _load_yaml(Path(file), file, problems, text)
    if problems or manifest is None:
        raise problems.error()
    return manifest


def _load_yaml(p: Path, file: str, problems: Problems, text: str | None = None) -> Manifest | None:
    if text is None:
        text = read_text(p, file)
    root, walk_problems = parse_yaml(text, file) if text.strip() else (None, [])
    if walk_problems:
        for problem in walk_problems:
            problems.add_problem(problem)
        return None
    if root is None:
        problems.add(file, None, None, "the manifest is empty")
        return None
    if not isinstance(root, YMap):
        problems.add(
            file,
            root.loc.line,
            root.loc.column,
            "the manifest must be a mapping (job: ..., tasks: ...), not a list or a single value",
        )
        return None
    for key, loc in root.key_locs.items():
        if key not in TOP_KEYS and not key.startswith("x-"):  # `x-...` keys hold anchors to reuse
            hint = did_you_mean(key, TOP_KEYS) or f"; the keys are: {', '.join(TOP_KEYS)}"
            problems.add(file, loc.line, loc.column, f"unknown key '{key}'{hint}")
    settings = _settings(root, file, problems)
    job = settings.job if settings.job is not None else p.stem
    if why := job_name_problem(job):
        at = root.items["job"].loc if "job" in root.items else None
        hint = "" if at else "; set job: in the manifest"
        problems.add(file, at.line if at else None, at.column if at else None, why + hint)
    provider = _provider(root, settings, file, problems)
    if provider is None:
        return None  # tasks checked against no provider's table would only add noise
    route = _route(root, settings, provider, file, problems)
    defaults = _defaults(root, settings, provider, file, problems)
    if defaults is None:
        return None
    builder = PlanBuilder(file, problems, defaults, p.parent)
    plans: list[Plan] = []
    data_rows = 0
    for key, node in root.items.items():
        if key == "tasks":
            plans += builder.tasks(node)
        elif key == "matrix":
            plans += builder.matrices(node)
        elif key == "rows":
            for plan, has_rows in builder.rows(node):
                plans.append(plan)
                data_rows += has_rows
    if problems:
        return None
    in_document = [plan for plan in plans if isinstance(plan, TaskPlan)]
    if not data_rows and not sum(plan.count for plan in in_document):
        _no_tasks(root, plans, file, problems)
        return None
    if sum(plan.count for plan in in_document) <= EAGER_CHECK_TASKS:
        # a `from:` may name a task of a CSV file, read only when the tasks are streamed
        for _ in generate(tuple(in_document), problems, complete=len(in_document) == len(plans)):
            pass
    output = settings.output or _Output()
    rate, retries = settings.rate_limit or _RateLimit(), settings.retries or _Retries()
    batch = settings.batch or _Batch()
    out_dir = output.dir if output.dir is not None else f"out/{job}"
    if not out_dir.strip() or any(ord(c) < 32 for c in out_dir):
        where = locate(root, ("output", "dir"))
        problems.add(file, where.line, where.column, "output.dir must be a folder path, without control characters")
    staging = _staging(root, batch.staging, file, problems)
    job_settings = JobSettings(
        name=job,
        output_dir=output_dir(p, out_dir),
        price_usd=settings.price_usd,
        budget_usd=settings.budget_usd,
        requests_per_second=rate.requests_per_second,
        max_in_flight=rate.max_in_flight,
        max_connections=rate.max_connections,
        max_attempts=retries.max_attempts,
        provider=provider,
        route=route,
        batch_max_requests=batch.max_requests,
        batch_max_bytes=batch.max_bytes,
        batch_price_usd=batch.price_usd,
        batch_create_grace_s=batch.create_grace_s,
        batch_staging=staging,
    )
    return Manifest(p, job_settings, tuple(plans))


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")  # Cloud Storage's bucket names


def staging_problem(uri: str) -> str | None:
    """Why `uri` is not a Cloud Storage folder a batch can stage its files in (`gs://BUCKET/PREFIX`), or None."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "gs" or not sep:
        return "must be a Cloud Storage folder, gs://BUCKET/PREFIX"
    if not _BUCKET.match(bucket):
        return "must name a Cloud Storage bucket (3-222 lowercase letters, digits, '-', '_' and '.') after gs://"
    if any(ord(c) < 32 or c in "*?[]#" for c in prefix) or "//" in prefix or prefix.startswith("."):
        return "must be a plain folder path after the bucket: no control characters, no * ? [ ] #, no '//'"
    return None


def _staging(root: YMap, given: str | None, file: str, problems: Problems) -> str | None:
    """`batch: staging`, checked where it is written: gs://BUCKET or gs://BUCKET/PREFIX (no trailing slash)."""
    if given is None:
        return None
    uri = given.strip().rstrip("/")
    if why := staging_problem(uri):
        where = locate(root, ("batch", "staging"))
        problems.add(file, where.line, where.column, f"batch.staging {why}, not {_shown(given)}")
        return None
    return uri


def _provider(root: YMap, settings: _Settings, file: str, problems: Problems) -> str | None:
    """The job's provider (the default when not given), or None after reporting an unknown one where it is."""
    name = settings.provider
    if name is None:  # not given (or `provider:` left empty), or refused by _settings, which said why
        refused = "provider" in root.items and to_plain(root.items["provider"]) is not None
        return None if refused else DEFAULT_PROVIDER
    if name in PROVIDERS:
        return name
    where = locate(root, ("provider",))
    problems.add(file, where.line, where.column, unknown_provider(name, did_you_mean(name, PROVIDERS)))
    return None


def _route(root: YMap, settings: _Settings, provider: str, file: str, problems: Problems) -> str:
    """The job's route ("online" when not given); a bad one is reported where it is written (and the job
    checked on as online, so its tasks are still checked)."""
    name = settings.route
    if name is None:
        return "online"
    where = locate(root, ("route",))
    if name not in ROUTES:
        problems.add(file, where.line, where.column,
                     f"unknown route '{name}'{did_you_mean(name, ROUTES)}; the routes are: {', '.join(ROUTES)}")  # fmt: skip
        return "online"
    if name == "batch" and not PROVIDERS[provider].batch_mode:
        # LinkModel (the default provider) has no batch mode: name the provider lines that fix it
        batch_providers = [p.name for p in PROVIDERS.values() if p.batch_mode]
        fix = " or ".join(f"provider: {p}" for p in batch_providers)
        problems.add(file, where.line, where.column,
                     f"route: batch needs {fix}; {PROVIDERS[provider].label} has no batch mode")  # fmt: skip
        return "online"
    return name


def _defaults(root: YMap, settings: _Settings, provider: str, file: str, problems: Problems) -> Defaults | None:
    """The job-wide model, quality, size, prompt and filename templates, each checked where it is written."""

    def given(key: str, text: str | None, builtin: str) -> Given:
        if text is None:
            return Given(builtin, None, 0)
        return Given(normalise_choice(key, text, provider), locate(root, (key,)), 1)

    before = len(problems.kept)
    model = given("model", settings.model, DEFAULT_MODEL)
    quality = given("quality", settings.quality, DEFAULT_QUALITY)
    size = given("size", settings.size, DEFAULT_SIZE)
    for error in choice_errors(model.text, quality.text, size.text, provider):
        at = {"model": model, "quality": quality, "size": size}[error.field].loc
        problems.add(file, at.line if at else None, at.column if at else None, error.message)
    prompt = _template(root, ("prompt",), settings.prompt, "prompt", file, problems)
    output = settings.output or _Output()
    filename = _template(root, ("output", "filename"), output.filename, "filename", file, problems)
    if filename is not None and (why := check_filename_template(filename)):
        where = locate(root, ("output", "filename"))
        problems.add(file, where.line, where.column, f"filename template '{filename.text}' {why}")
    if len(problems.kept) != before:
        return None  # tasks checked against a broken default would only repeat its problem
    return Defaults(model, quality, size, prompt, filename or compile_template(DEFAULT_FILENAME), provider)


def _template(
    root: YMap, path: tuple[str, ...], text: str | None, what: str, file: str, problems: Problems
) -> Template | None:
    if text is None:
        return None
    try:
        return compile_template(text)
    except TemplateError as e:
        where = locate(root, path)
        problems.add(file, where.line, where.column, f"{what} template '{text}': {e}")
        return None


def _no_tasks(root: YMap, plans: list[Plan], file: str, problems: Problems) -> None:
    empty_csvs = [plan for plan in plans if isinstance(plan, RowsPlan)]
    for plan in empty_csvs:
        problems.add_problem(Problem(plan.file, plan.header_line, None, "the file has a header but no data rows"))
    if empty_csvs:
        return
    present: list[YNode] = [root.items[k] for k in _SOURCES if k in root.items]
    where: Loc = present[0].loc if present else root.loc
    problems.add(file, where.line, where.column, "the manifest has no tasks: add tasks:, matrix: or rows:")


__all__ = ["Manifest", "ManifestError", "load_manifest", "load_manifest_text"]
