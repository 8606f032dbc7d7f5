"""The ``find`` step type: select files below a directory by glob, kind and size."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

from wsrun.core.fileio import is_temp_name
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "find"
DOC = """List the files below a directory that match glob patterns, kind and size.

Later steps take the list from the outputs (``steps.<id>.outputs.files``) instead
of each repeating its own selection, so a delivery, its checksums and its
manifest all cover the same files. Patterns match the whole path relative to
``root`` with ``/`` separators: ``*`` and ``?`` never cross a ``/``, ``**`` as a
whole path component matches zero or more directories (``**/*.xml`` finds XML
files at any depth, ``*.fits`` only directly in ``root``; ``products/**``
everything below ``products``). ``[abc]`` and ``[!abc]`` are character classes.
Names starting with a dot are not special. Symbolic links are reported, not
followed, and wsrun's own temporary files (``.<name>.wsrun-tmp``) are never
listed. In a dry run the step sees the files earlier steps would create.
"""
_GLOBS: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
    ]
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["root"],
    "properties": {
        "root": {
            "type": "string",
            "description": "Directory to search; relative paths are taken from the workdir.",
            "examples": ["products", "/data/run42"],
        },
        "patterns": {
            **_GLOBS,
            "description": "Glob or list of globs matched against the path relative to root; "
            "an entry is selected when any of them matches.",
            "default": ["**"],
            "examples": ["*.fits", ["**/*.xml", "products/**"]],
        },
        "type": {
            "type": "string",
            "enum": ["file", "dir", "symlink", "any"],
            "default": "file",
            "description": "Kind of entry to select: regular files, directories, "
            "symbolic links, or all of them.",
        },
        "min_size": {
            "type": "integer",
            "minimum": 0,
            "description": "Smallest size in bytes of a selected regular file "
            "(other kinds are not size-checked).",
        },
        "max_size": {
            "type": "integer",
            "minimum": 0,
            "description": "Largest size in bytes of a selected regular file "
            "(other kinds are not size-checked).",
        },
        "exclude": {
            **_GLOBS,
            "description": "Globs of paths to leave out; excluding a directory "
            "leaves out everything below it.",
            "default": [],
            "examples": [["**/.*", "scratch"]],
        },
        "max_depth": {
            "type": "integer",
            "minimum": 1,
            "description": "Deepest level to select: 1 is the entries directly in root.",
        },
    },
}
EXAMPLES = [
    """- id: images
  uses: find
  with:
    root: products
    patterns: "**/*.fits"
    min_size: 1
""",
    """- id: metadata
  uses: find
  with:
    root: "{{ inputs.delivery }}"
    patterns: ["*.xml", "**/*.json"]
    exclude: ["scratch", "**/.*"]
    max_depth: 2
""",
]
OUTPUTS = {
    "files": "absolute paths of the selected entries, sorted",
    "count": "number of selected entries",
    "bytes": "total size in bytes of the selected regular files",
}


def glob_to_regex(pattern: str) -> str:
    """A regular expression matching the same relative paths as ``pattern``."""
    parts: list[str] = []
    for part in pattern.strip("/").split("/"):
        if not (part == "**" and parts and parts[-1] == "**"):  # "**/**" is "**"
            parts.append(part)
    out: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            if last:
                # "a/**" is everything below a; "**" alone is everything.
                out.append(".+" if i == 0 else "/.+")
                continue
            out.append("(?:[^/]+/)*" if i == 0 else "/(?:[^/]+/)*")
            continue
        if i > 0 and parts[i - 1] != "**":
            out.append("/")
        out.append(_component(part))
    return "".join(out)


def _component(part: str) -> str:
    """The regex of one path component: ``*``, ``?`` and ``[...]`` never match ``/``."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] == "!":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append(re.escape(c))
                continue
            body = part[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = "".join("\\" + ch if ch in "\\^[]&~|" else ch for ch in body)
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


@lru_cache(maxsize=256)
def compile_globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex matching any of ``patterns`` (None when there are none)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{glob_to_regex(p)})" for p in patterns), re.DOTALL)


def as_list(value: str | list[str] | None, default: list[str]) -> tuple[str, ...]:
    """A glob parameter given as one string or a list."""
    if value is None:
        return tuple(default)
    return (value,) if isinstance(value, str) else tuple(value)


def excluded(rel: str, exclude: re.Pattern[str] | None) -> bool:
    """True when ``rel`` or one of its parent directories matches ``exclude``."""
    if exclude is None:
        return False
    parts = rel.split("/")
    return any(exclude.fullmatch("/".join(parts[:k])) for k in range(1, len(parts) + 1))


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    root = ctx.path(params["root"])
    info = ctx.fs.stat(root)
    if info is None:
        raise StepError("no such directory", path=root)
    if not info.is_dir:
        raise StepError("not a directory", path=root)
    match = compile_globs(as_list(params.get("patterns"), ["**"]))
    exclude = compile_globs(as_list(params.get("exclude"), []))
    kind = params.get("type", "file")
    min_size = params.get("min_size")
    max_size = params.get("max_size")
    max_depth = params.get("max_depth")

    files: list[str] = []
    total = 0
    for rel, entry in ctx.fs.walk(root):
        ctx.check_deadline()
        if kind != "any" and entry.kind != kind:
            continue
        if is_temp_name(rel.rsplit("/", 1)[-1]):
            continue
        if max_depth is not None and rel.count("/") >= max_depth:
            continue
        if entry.is_file and (
            (min_size is not None and entry.size < min_size)
            or (max_size is not None and entry.size > max_size)
        ):
            continue
        if match is None or not match.fullmatch(rel) or excluded(rel, exclude):
            continue
        files.append(os.path.join(root, rel))
        if entry.is_file:
            total += entry.size
    files.sort()
    return Plan(outputs={"files": files, "count": len(files), "bytes": total})


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
