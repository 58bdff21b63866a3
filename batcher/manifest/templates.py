"""Placeholder templates (`"Sticker of a {animal}"`, `"{index:05d}-{key}.png"`) and filename safety.

A template is compiled once and rendered per task, so the streaming path does no parsing. Syntax: `{name}`
or `{name:spec}` (a str.format spec), `{{` and `}}` for literal braces. Nothing else of str.format (no
attribute access, indexing or conversions), so a template can only ever read the values it is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_SEGMENT_BYTES = 255  # the common limit on one file or folder name (ext4, APFS, NTFS)

# Replaced in values substituted into a filename: path separators, characters Windows and macOS refuse,
# and control characters. A value can then never add a folder level or leave the output directory.
UNSAFE_IN_NAME = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0), *(ord(c) for c in '/\\:*?"<>|')], "_")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"[A-Za-z]:")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateError(ValueError):
    """A template cannot be compiled or rendered; the message says why."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str
    spec: str  # str.format spec, "" for none


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[str | Placeholder, ...]
    names: frozenset[str]
    # The same template as a positional str.format string and the value names it takes, in order: rendering
    # is then one C call per task, which matters for a million CSV rows.
    _pattern: str = field(default="", compare=False, repr=False)
    _order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def order(self) -> tuple[str, ...]:
        """The names of the placeholders, in order, as `render_values` takes their values."""
        return self._order

    def render(self, values: Mapping[str, str | int]) -> str:
        """The text with every placeholder filled in; KeyError for a missing value."""
        return self.render_values([values[name] for name in self._order])

    def render_filename(self, values: Mapping[str, str | int]) -> str:
        """Like render, with unsafe characters of each substituted value replaced by `_`."""
        return self.render_values([safe_value(values[name]) for name in self._order])

    def render_values(self, args: list[str | int]) -> str:
        """The text with the placeholders filled in from `args`, one per placeholder in `order`."""
        try:
            return self._pattern.format(*args)
        except ValueError:  # a numeric spec on text: the slow path knows what to do, or says what is wrong
            fields = iter(args)
            return "".join(p if isinstance(p, str) else _format(next(fields), p) for p in self.parts)


def safe_value(value: str | int) -> str | int:
    """A value fit for a filename: separators, reserved and control characters replaced by `_`."""
    return value.translate(UNSAFE_IN_NAME) if isinstance(value, str) else value


def _format(value: str | int, p: Placeholder) -> str:
    if not p.spec:
        return value if isinstance(value, str) else str(value)
    try:
        return format(value, p.spec)
    except ValueError:
        pass
    # A numeric spec on text that spells a number ("7" with {n:03d}): CSV and YAML values arrive as text.
    for number in (int, float):
        try:
            return format(number(value), p.spec)
        except ValueError:
            continue
    raise TemplateError(f"cannot format '{value}' with '{{{p.name}:{p.spec}}}'")


def _check_spec(name: str, spec: str) -> None:
    for sample in ("text", 1, 1.0):
        try:
            format(sample, spec)
            return
        except ValueError:
            continue
    raise TemplateError(f"'{{{name}:{spec}}}' has an invalid format spec")


def compile_template(text: str) -> Template:
    """Parse a template; TemplateError names the first fault."""
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        if token in ("{", "}"):
            raise TemplateError(
                f"unmatched '{token}' at position {match.start() + 1}; write '{token * 2}' for a literal brace"
            )
        name, _, spec = match.group(1).partition(":")
        if not name.strip():
            raise TemplateError(f"empty placeholder '{token}' at position {match.start() + 1}")
        if spec:
            _check_spec(name, spec)
        if "".join(literal):
            parts.append("".join(literal))
        literal.clear()
        parts.append(Placeholder(name, spec))
    literal.append(text[pos:])
    if "".join(literal):
        parts.append("".join(literal))
    return _template(text, tuple(parts))


def _template(text: str, parts: tuple[str | Placeholder, ...]) -> Template:
    order = tuple(p.name for p in parts if isinstance(p, Placeholder))
    pieces, n = [], 0
    for p in parts:
        if isinstance(p, str):
            pieces.append(p.replace("{", "{{").replace("}", "}}"))
        else:
            pieces.append(f"{{{n}:{p.spec}}}" if p.spec else f"{{{n}}}")
            n += 1
    return Template(text, parts, frozenset(order), "".join(pieces), order)


def literal_template(text: str) -> Template:
    """A template that renders `text` as it is (braces included)."""
    return _template(text, (text,) if text else ())


def check_relative_path(path: str) -> str | None:
    """Why `path` could leave (or is not) a file inside the output directory; None when it is safe."""
    if not path:
        return "is empty"
    if _CONTROL.search(path):
        return "contains a control character"
    if path.startswith(("/", "\\")):
        return "is an absolute path; give a path relative to the output directory"
    if _DRIVE.match(path):
        return "starts with a drive letter; give a path relative to the output directory"
    if "\\" in path:
        return "contains '\\'; use '/' to separate folders"
    for segment in path.split("/"):
        if segment == "..":
            return "has a '..' part, which would leave the output directory"
        if segment in ("", "."):
            return "has an empty or '.' part (doubled or trailing '/'?)"
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            return f"has a part longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def check_rendered_filename(path: str) -> str | None:
    """check_relative_path for the output of a template that passed check_filename_template.

    Its own text is known safe and values cannot hold separators or control characters, so only a part
    made wholly of values can be wrong (empty, '.', '..', too long). The common single-part name is checked
    without splitting or encoding.
    """
    if "/" in path:
        return check_relative_path(path)
    if path in ("", ".", ".."):
        return check_relative_path(path) or "is empty"
    if len(path) * 4 > MAX_SEGMENT_BYTES and len(path.encode()) > MAX_SEGMENT_BYTES:  # UTF-8: ≤ 4 bytes a character
        return f"is longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def check_filename_template(template: Template) -> str | None:
    """Why a filename template is unsafe whatever its values; None when only its rendering can tell."""
    if not template.parts:
        return "is empty"
    # Each placeholder stands for a harmless single character: what remains is the template's own text.
    skeleton = "".join(p if isinstance(p, str) else "x" for p in template.parts)
    return check_relative_path(skeleton)
