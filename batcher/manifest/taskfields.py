"""Checks of single task fields (model, quality, size, images, names) and the manifest's problem list.

Pure functions of their inputs, each returning a message the user can act on, so YAML tasks, matrices and
CSV rows all get the same wording.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from batcher.catalog import DEFAULT_PROVIDER, TIER_SCALE, provider_facts
from batcher.errors import ManifestError, Problem
from batcher.manifest.inputs import is_local

FIELD_KEYS = ("prompt", "model", "quality", "size", "filename", "images", "seed", "variant", "name", "from")
# What name and filename templates may use besides the task's variables. A filename may also use the task's
# other fields that are short text: its name, the name of its input task (`from:`), and `variant` (its seed).
TEMPLATE_BUILTINS = ("model", "quality", "size", "seed", "index", "key")
FILENAME_BUILTINS = (*TEMPLATE_BUILTINS, "variant", "name", "from")
DEFAULT_FILENAME = "{index:05d}-{key}.png"  # manifest order, then identity: unique per task, sorts well
KEY_CHARS = 12  # hex characters of spec.key in `{key}`: 48 bits, plenty to tell a job's tasks apart
MAX_NAME_CHARS = 200
MAX_SEED_CHARS = 200
MAX_PROBLEMS = 200  # reported in full; past this only counted, a broken million-row file stays readable

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for a close match, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def job_name_problem(name: str) -> str | None:
    if JOB_NAME.fullmatch(name):
        return None
    return (
        f"job name '{name}' is not valid: use 1 to 100 letters, digits, '.', '_' or '-', starting with a "
        "letter or digit (it becomes a folder name)"
    )


# --- model, quality, size ------------------------------------------------------------------------------


def normalise_quality(quality: str) -> str:
    """'1k' → '1K': tiers are written with a capital K."""
    q = quality.strip()
    return q[:-1] + "K" if q.endswith("k") else q


@lru_cache(maxsize=4096)  # a CSV size column holds a handful of values, normalised once each
def normalise_size(size: str, provider: str = DEFAULT_PROVIDER) -> str:
    """'16X9' or '16:9' → '16x9' (canonical) for a ratio the provider serves; anything else trimmed and lower-cased,
    for choice_errors to refuse as written."""
    return provider_facts(provider).to_canonical(size) or size.strip().lower()


def normalise_choice(key: str, text: str, provider: str = DEFAULT_PROVIDER) -> str:
    """A model, quality or size (`key`) as written → as checked and stored."""
    if key == "quality":
        return normalise_quality(text)
    if key == "size":
        return normalise_size(text, provider)
    return text.strip()


class ChoiceError(NamedTuple):
    field: str  # "model", "quality" or "size": the value at fault
    message: str


@lru_cache(maxsize=4096)  # CSV rows repeat a handful of combinations; this keeps per-row cost at a lookup
def choice_errors(model: str, quality: str, size: str, provider: str = DEFAULT_PROVIDER) -> tuple[ChoiceError, ...]:
    """What is wrong with asking `provider` (a known one) for `model` at `quality` and `size` (normalised values);
    () when all is well. The one place that says which models, qualities and sizes a provider takes."""
    table = provider_facts(provider)
    facts = table.model(model)
    if facts is None:
        known = ", ".join(table.models)
        return (
            ChoiceError("model", f"unknown model '{model}'{did_you_mean(model, table.models)}; known models: {known}"),
        )
    errors: list[ChoiceError] = []
    if quality not in TIER_SCALE:
        tiers = ", ".join(TIER_SCALE)
        errors.append(
            ChoiceError(
                "quality",
                f"unknown quality '{quality}'; {model} accepts {_accepts(facts.qualities)} (the tiers are {tiers})",
            )
        )
    elif quality not in facts.qualities:
        errors.append(
            ChoiceError(
                "quality",
                f"quality {quality} is not available for {model}, which {_accepts(facts.qualities, verb=True)}",
            )
        )
    if size not in facts.sizes:
        # Shown as the provider writes it (a size the provider knows is canonical here; any other as written).
        shown = table.to_wire(size) if size in table.sizes else size
        ratios = ", ".join(table.to_wire(s) for s in facts.sizes)
        errors.append(ChoiceError("size", f"size '{shown}' is not an aspect ratio of {model}; use one of {ratios}"))
    return tuple(errors)


def _accepts(qualities: tuple[str, ...], *, verb: bool = False) -> str:
    if len(qualities) == 1:
        return f"only accepts {qualities[0]}" if verb else f"only {qualities[0]}"
    return ("accepts " if verb else "") + ", ".join(qualities)


# --- images, seeds, names ------------------------------------------------------------------------------


def image_count_problem(
    count: int, *, chained: bool = False, model: str | None = None, provider: str = DEFAULT_PROVIDER
) -> str | None:
    """Why `count` input images are too few or too many; None when they fit. Without `model` (not known yet),
    against the most any model of the provider takes; with it, against that model's own limit. `chained`: the
    task's parent output (`from:`) is one more input."""
    table = provider_facts(provider)
    most = table.max_input_images
    if not 1 <= count <= most:
        return f"images must list 1 to {most} input images (got {count}), or be left out"
    if chained and count >= most:
        return f"images may list at most {most - 1} input images besides the one from: gives"
    facts = table.model(model) if model is not None else None
    if facts is None:  # an unknown model is reported by choice_errors
        return None
    limit = facts.max_input_images
    if count > limit:
        return f"{model} takes at most {limit} input images (got {count})"
    if chained and count >= limit:
        return f"{model} takes at most {limit} input images: images may list {limit - 1} besides the one from: gives"
    return None


def images_problem(
    images: tuple[str, ...], *, chained: bool = False, model: str | None = None, provider: str = DEFAULT_PROVIDER
) -> str | None:
    """Why a task's input images are not valid; None when they are. Local file names pass here (they are read
    later); `chained`, `model`, `provider`: as for image_count_problem."""
    why = image_count_problem(len(images), chained=chained, model=model, provider=provider)
    if why:
        return why
    for i, image in enumerate(images, start=1):
        if is_local(image):
            if not image.strip() or _CONTROL.search(image):
                return f"image {i} is not a file name, an http(s) URL or a data:image/... URI"
            continue
        if image.startswith("data:"):
            if not _DATA_URI.fullmatch(image):
                return f"image {i} is not a valid data: URI (expected data:image/<type>;base64,<data>)"
            continue
        parts = urlsplit(image)
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in image):
            shown = image if len(image) <= 60 else image[:57] + "..."
            return f"image {i} '{shown}' is not an http(s) URL or a data:image/... URI"
    return None


def seed_problem(seed: str) -> str | None:
    if not seed.strip():
        return "seed/variant is empty; leave it out instead"
    if len(seed) > MAX_SEED_CHARS or _CONTROL.search(seed):
        return f"seed/variant must be at most {MAX_SEED_CHARS} characters, without control characters"
    return None


def name_problem(name: str) -> str | None:
    if not name.strip():
        return "the task name is empty"
    if len(name) > MAX_NAME_CHARS or _CONTROL.search(name):
        return f"a task name must be at most {MAX_NAME_CHARS} characters, without control characters"
    return None


# --- the problem list ---------------------------------------------------------------------------------


class Problems:
    """Every problem found, in the order found; the first MAX_PROBLEMS kept, the rest counted."""

    def __init__(self, cap: int = MAX_PROBLEMS) -> None:
        self.cap = cap
        self.kept: list[Problem] = []
        self._seen: set[Problem] = set()  # the same fault reached from many tasks is reported once
        self.more = 0

    def add(self, file: str, line: int | None, column: int | None, message: str) -> None:
        self.add_problem(Problem(file, line, column, message))

    def add_problem(self, problem: Problem) -> None:
        if problem in self._seen:
            return
        if len(self.kept) < self.cap:
            self.kept.append(problem)
            self._seen.add(problem)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.kept)

    def error(self) -> ManifestError:
        problems = list(self.kept)
        if self.more:
            last = problems[-1]
            problems.append(Problem(last.file, None, None, f"... and {self.more:,} more problems"))
        return ManifestError(problems)
