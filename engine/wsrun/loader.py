"""Reading YAML while keeping where every value came from.

Errors in a recipe are reported as ``file:line:col``, so we keep the position
of every mapping key and value. Parsing uses libyaml's C loader when PyYAML has
it (several times faster than the pure-Python one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader

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
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


def load(file: str, text: str | None = None) -> Document:
    if text is None:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(file, None, {}, text)
        _on_is_a_key(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Where(file, mark.line + 1, mark.column + 1) if mark else Where(file, 1, 1)
        raise YamlError(where, f"YAML: {e.problem or e.context}") from None
    finally:
        loader.dispose()
    marks: dict[Path_, Where] = {}
    _walk(file, node, (), marks)
    return Document(file, data, marks, text)


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
