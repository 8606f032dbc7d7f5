"""Reading YAML while keeping where every value came from.

Errors in a recipe are reported as ``file:line:col``, so we keep the position
of every mapping key and value. Parsing uses libyaml's C loader when PyYAML has
it (several times faster than the pure-Python one).

Any file, however malformed or hostile, ends in a Document or a YamlError with
a position: bytes that are not UTF-8, control characters, values YAML cannot
construct (``!!int t``, a minute of 60, a 5,000-digit integer), nesting deeper
than MAX_DEPTH and aliases that expand past MAX_NODES (an alias bomb) are all
refused before they cost time or memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

try:
    _Base: type = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _Base = yaml.SafeLoader

#: Most values (scalars, lists, mappings; aliases counted as often as they are
#: used) a file may hold; the largest packaged recipe holds under 500.
MAX_NODES = 20_000
#: Deepest nesting of lists and mappings; recipes use fewer than ten levels.
MAX_DEPTH = 100
#: Characters YAML forbids in a file (it allows tab, newline, carriage return,
#: printable Unicode and NEL).
_FORBIDDEN = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader, with a position on every value it cannot construct."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError, LookupError) as e:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            value = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
            shown = value if len(value) <= 40 else value[:37] + "..."
            reason = (
                "it is empty" if isinstance(node, yaml.ScalarNode) and not value else _reason(e)
            )
            raise yaml.MarkedYAMLError(
                problem=f"cannot read {shown!r} as {tag}: {reason} (quote it to keep it text)",
                problem_mark=node.start_mark,
            ) from None


def _reason(e: Exception) -> str:
    text = str(e)
    if "Exceeds the limit" in text:
        return "too many digits"
    if isinstance(e, AttributeError) or not text:
        return "not in that format"
    return text


Path_ = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Where:
    """A position in a file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class YamlError(Exception):
    def __init__(self, where: Where, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass
class Document:
    """Parsed YAML plus the position of each value, keyed by its path."""

    file: str
    data: Any
    marks: dict[Path_, Where]
    text: str
    _lines: list[str] | None = field(default=None, repr=False, compare=False)

    def where(self, path: Path_) -> Where:
        """The position of the value at ``path``, or of its nearest parent."""
        path = tuple(path)
        while path:
            if path in self.marks:
                return self.marks[path]
            path = path[:-1]
        return self.marks.get((), Where(self.file, 1, 1))

    def key_where(self, path: Path_) -> Where:
        """The position of the key that holds ``path`` (for 'unknown key')."""
        return self.marks.get(("key",) + tuple(path)) or self.where(path)

    def line_text(self, line: int) -> str:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines[line - 1] if 0 < line <= len(self._lines) else ""


def load(file: str, text: str | None = None) -> Document:
    if text is None:
        with open(file, "rb") as f:
            text = decode(file, f.read())
    bad = _FORBIDDEN.search(text)
    if bad:
        raise YamlError(
            _where_index(file, text, bad.start()),
            f"YAML: control character U+{ord(bad.group()):04X} is not allowed "
            "(inside a double-quoted string write it as an escape, e.g. \\x07)",
        )
    _check_size(file, text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(file, None, {}, text)
        _on_is_a_key(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = _in_text(file, text, mark.line, mark.column) if mark else Where(file, 1, 1)
        problem = e.problem or e.context
        if e.context and e.problem and e.problem.startswith("but "):
            problem = f"{e.context}, {e.problem}"  # "expected a single document ..., but found"
        raise YamlError(where, f"YAML: {problem}") from None
    except yaml.YAMLError as e:  # a reader error: no mark, maybe a position
        raise YamlError(_where_index(file, text, getattr(e, "position", 0)), f"YAML: {e}") from None
    finally:
        loader.dispose()
    marks: dict[Path_, Where] = {}
    _walk(file, node, (), marks)
    return Document(file, data, marks, text)


def decode(file: str, raw: bytes) -> str:
    """The text of a file that must be UTF-8; a YamlError at the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        good = raw[: e.start].decode("utf-8")
        line = good.count("\n") + 1
        col = len(good) - (good.rfind("\n") + 1) + 1
        raise YamlError(
            Where(file, line, col),
            f"not UTF-8: byte 0x{raw[e.start]:02x} cannot be decoded (save the file as UTF-8)",
        ) from None


def _in_text(file: str, text: str, line: int, col: int) -> Where:
    """The 1-based position of libyaml's 0-based mark, kept inside the text:
    at the end of a file without a final newline libyaml points one line past it."""
    lines = text.split("\n")
    if line >= len(lines):
        return Where(file, len(lines), len(lines[-1]) + 1)
    return Where(file, line + 1, col + 1)


def _where_index(file: str, text: str, index: int) -> Where:
    before = text[:index]
    return Where(file, before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1)


def _check_size(file: str, text: str) -> None:
    """Count values as libyaml's parser reports them (cheap: no Python objects
    per value) and refuse too many or too deep before anything is built. An
    alias counts as the whole value it repeats, and as deep as it is, which
    stops alias bombs and nesting built from aliases."""
    loader = _Base(text)
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, levels)
    open_: list[list[Any]] = []  # [anchor, count at start, level, deepest level inside]
    count = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            deepest = 0
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in sizes:
                    if any(entry[0] == event.anchor for entry in open_):
                        raise _at(
                            file, event, f"alias *{event.anchor} is inside the value it names"
                        )
                    continue  # undefined: the composer reports it
                values, levels = sizes[event.anchor]
                count += values
                deepest = len(open_) + levels
            elif isinstance(event, yaml.ScalarEvent):
                count += 1
                if event.anchor:
                    sizes[event.anchor] = (1, 0)
            elif isinstance(event, yaml.CollectionStartEvent):
                count += 1
                open_.append([event.anchor, count, len(open_) + 1, len(open_) + 1])
                deepest = len(open_)
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, start, level, inside = open_.pop()
                if anchor:
                    sizes[anchor] = (count - start + 1, inside - level + 1)
                deepest = inside
            if open_:
                open_[-1][3] = max(open_[-1][3], deepest)
            if deepest > MAX_DEPTH:
                raise _at(file, event, f"nested more than {MAX_DEPTH} levels deep")
            if count > MAX_NODES:
                what = "with aliases expanded (an alias bomb?)" if sizes else "(a recipe, not data)"
                raise _at(file, event, f"more than {MAX_NODES} values {what}")
    except yaml.YAMLError:
        pass  # parsed again below, where the error gets its position
    finally:
        loader.dispose()


def _at(file: str, event: yaml.Event, message: str) -> YamlError:
    mark = event.start_mark
    return YamlError(Where(file, mark.line + 1, mark.column + 1), f"YAML: {message}")


def _on_is_a_key(node: yaml.Node) -> None:
    """A recipe's top-level ``on:`` stays the string "on": YAML 1.1 reads a
    plain ``on`` as the boolean true (the GitHub Actions pitfall)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in ("on", "On", "ON"):
                key_node.tag = "tag:yaml.org,2002:str"


def _walk(file: str, node: yaml.Node, path: Path_, marks: dict[Path_, Where]) -> None:
    marks[path] = Where(file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key in seen:
                where = Where(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                raise YamlError(where, f"duplicate key '{key}'")
            seen.add(key)
            marks[("key",) + path + (key,)] = Where(
                file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
            )
            _walk(file, value_node, path + (key,), marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(file, item, path + (i,), marks)
