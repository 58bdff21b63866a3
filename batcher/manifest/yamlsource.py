"""YAML text → a small tree of located nodes (line and column of every value and key). Safe by construction.

Only the YAML *composer* runs (text → node graph); nothing is ever constructed from tags, so object tags
such as ``!!python/object`` can do nothing and are reported as errors. Scalars keep the text the user typed
(``sku: 00123`` stays ``"00123"``, ``size: 16:9`` stays ``"16:9"``): the manifest decides what each value
means, not YAML 1.1's implicit typing. Aliases are expanded while walking the graph, with a cap on the
nodes visited again through them, so a "billion laughs" document is refused in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from batcher.errors import Problem
from batcher.manifest.sourcetext import SourceFault

# libyaml's parser is ~7x faster than the pure-Python one and refuses nesting deeper than 1,000 levels itself;
# the pure-Python fallback recurses, so its RecursionError is caught below.
_Composer: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_ALIAS_NODES = 100_000  # nodes reached again through aliases; real manifests reuse a few small anchors
MAX_NODES = 2_000_000  # nodes in the expanded tree, whatever their origin
MAX_DEPTH = 64  # manifests nest a handful of levels; a cycle (`&a [*a]`) would nest forever

_YAML = "tag:yaml.org,2002:"
NULL_TAG = _YAML + "null"
_SCALAR_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MERGE_TAG = _YAML + "merge"


@dataclass(frozen=True, slots=True)
class Loc:
    """1-based line and column in the YAML file."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class YScalar:
    text: str  # as written (quotes and escapes resolved); "" for an empty value
    is_null: bool  # `key:` with nothing, `~` or `null`
    loc: Loc


@dataclass(frozen=True, slots=True)
class YSeq:
    items: list[YNode]
    loc: Loc


@dataclass(frozen=True, slots=True)
class YMap:
    items: dict[str, YNode]  # in document order; merged (`<<`) keys after the explicit ones
    key_locs: dict[str, Loc] = field(default_factory=dict)
    loc: Loc = Loc(1, 1)


YNode = YScalar | YSeq | YMap


def kind(node: YNode) -> str:
    """What a node is, for messages."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    return "empty" if node.is_null else f"'{node.text}'"


def _loc(node: yaml.Node) -> Loc:
    return Loc(node.start_mark.line + 1, node.start_mark.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


class _Walker:
    """Turns the composed node graph into a YNode tree, expanding aliases under the caps above."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.seen: set[int] = set()
        self.revisits = 0
        self.nodes = 0
        self.top_key: Loc | None = None  # where a runaway expansion is reported: the top-level key holding it

    def _fatal(self, loc: Loc | None, message: str) -> SourceFault:
        loc = self.top_key or loc
        return SourceFault(Problem(self.file, loc.line if loc else None, loc.column if loc else None, message))

    def walk(self, node: yaml.Node, depth: int = 0) -> YNode:
        self.nodes += 1
        if id(node) in self.seen:
            self.revisits += 1
            if self.revisits > MAX_ALIAS_NODES:
                raise self._fatal(
                    _loc(node),
                    f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes "
                    "(an alias bomb?); repeat fewer or smaller anchors",
                )
        else:
            self.seen.add(id(node))
        if self.nodes > MAX_NODES:
            raise self._fatal(_loc(node), f"the document has more than {MAX_NODES:,} values; use a CSV file (rows:)")
        if depth > MAX_DEPTH:
            raise self._fatal(_loc(node), f"values nested more than {MAX_DEPTH} levels deep (a recursive alias?)")
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                self._bad_tag(node)
            return YScalar(node.value, node.tag == NULL_TAG, _loc(node))
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _YAML + "seq":
                self._bad_tag(node)
            return YSeq([self.walk(child, depth + 1) for child in node.value], _loc(node))
        assert isinstance(node, yaml.MappingNode)
        if node.tag != _YAML + "map":
            self._bad_tag(node)
        return self._mapping(node, depth)

    def _mapping(self, node: yaml.MappingNode, depth: int) -> YMap:
        out = YMap({}, {}, _loc(node))
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.problems.append(self._at(_loc(key_node), "a key must be plain text"))
                continue
            key = key_node.value
            if key in out.items:
                first = out.key_locs[key]
                self.problems.append(self._at(_loc(key_node), f"duplicate key '{key}' (first at line {first.line})"))
                continue
            if depth == 0:
                self.top_key = _loc(key_node)
            out.items[key] = self.walk(value_node, depth + 1)
            out.key_locs[key] = _loc(key_node)
        self._merge(out, merges, depth)
        return out

    def _merge(self, out: YMap, merges: list[yaml.Node], depth: int) -> None:
        """`<<: *defaults` or `<<: [*a, *b]`: keys written in the mapping win, then earlier sources."""
        for merge in merges:
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for source in sources:
                walked = self.walk(source, depth + 1)
                if not isinstance(walked, YMap):
                    self.problems.append(self._at(walked.loc, "`<<` merges only mappings"))
                    continue
                for key, value in walked.items.items():
                    if key not in out.items:
                        out.items[key] = value
                        out.key_locs[key] = walked.key_locs[key]

    def _bad_tag(self, node: yaml.Node) -> None:
        self.problems.append(
            self._at(
                _loc(node),
                f"the YAML tag '{_short_tag(node.tag)}' is not allowed in a manifest "
                "(only plain values, lists and mappings)",
            )
        )

    def _at(self, loc: Loc, message: str) -> Problem:
        return Problem(self.file, loc.line, loc.column, message)


def _syntax_problem(file: str, text: str, error: yaml.YAMLError) -> Problem:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = error.problem or "syntax error"
        if error.context and "expected a single document" in error.context:
            what = "only one YAML document is allowed (found a second '---')"
        lines = text.split("\n")
        if mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
            what += " (YAML indents with spaces, not tabs)"
        return Problem(file, mark.line + 1, mark.column + 1, f"YAML syntax error: {what}")
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        char = error.character
        code = char if isinstance(char, int) else ord(char)
        return Problem(file, line, column, f"character U+{code:04X} (a control character) is not allowed in YAML")
    return Problem(file, None, None, f"YAML error: {error}")


def parse_yaml(text: str, file: str) -> tuple[YNode | None, list[Problem]]:
    """The document's tree (None for an empty document) and the problems met; raises SourceFault if fatal."""
    loader = _Composer(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        raise SourceFault(_syntax_problem(file, text, e)) from None
    except RecursionError:
        raise SourceFault(Problem(file, None, None, "values are nested too deeply")) from None
    finally:
        loader.dispose()
    if root is None:
        return None, []
    _refuse_bombs(root, file)
    walker = _Walker(file)
    tree = walker.walk(root)
    return tree, walker.problems


class _TooDeep(Exception):
    pass


def _refuse_bombs(root: yaml.Node, file: str) -> None:
    """Refuse a document whose aliases would expand too far, before expanding any of it.

    The composed document is a graph: an alias is a second edge to a node. Each node's expanded size is
    counted once (memoised), so this costs the size of the file, however large the expansion would be.
    Problems are reported at the top-level key holding the fault.
    """
    sizes: dict[int, int] = {}
    excess = 0  # nodes reached again through aliases

    def size(node: yaml.Node, depth: int) -> int:
        nonlocal excess
        if isinstance(node, yaml.ScalarNode):
            return 1
        known = sizes.get(id(node))
        if known is not None:
            excess += known
            return known
        if depth > MAX_DEPTH:  # also ends a recursive alias, which has no size
            raise _TooDeep
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child, depth + 1) for child in node.value)
        else:
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        sizes[id(node)] = n
        return n

    tops = root.value if isinstance(root, yaml.MappingNode) else [(root, root)]
    for key, value in tops:
        try:
            size(key, 1)
            size(value, 1)
        except _TooDeep:
            where = _loc(key)
            message = f"values nested more than {MAX_DEPTH} levels deep (a recursive alias?)"
            raise SourceFault(Problem(file, where.line, where.column, message)) from None
        if excess > MAX_ALIAS_NODES:
            where = _loc(key)
            message = (
                f"aliases expand to more than {MAX_ALIAS_NODES:,} values beyond the document's own "
                "(an alias bomb?); repeat fewer or smaller anchors"
            )
            raise SourceFault(Problem(file, where.line, where.column, message))


def to_plain(node: YNode) -> Any:
    """Plain data for pydantic: scalars as the text written (None when empty), lists, dicts."""
    if isinstance(node, YScalar):
        return None if node.is_null else node.text
    if isinstance(node, YSeq):
        return [to_plain(item) for item in node.items]
    return {key: to_plain(value) for key, value in node.items.items()}


def locate(root: YNode, path: tuple[str | int, ...], *, key: bool = False) -> Loc:
    """Where `path` (e.g. ("rate_limit", "max_in_flight")) is, or the deepest part of it that exists.

    With key=True, the location of the last key itself (for unknown keys).
    """
    node = root
    for i, part in enumerate(path):
        if isinstance(node, YMap) and isinstance(part, str) and part in node.items:
            if key and i == len(path) - 1:
                return node.key_locs[part]
            node = node.items[part]
        elif isinstance(node, YSeq) and isinstance(part, int) and 0 <= part < len(node.items):
            node = node.items[part]
        else:
            break
    return node.loc
