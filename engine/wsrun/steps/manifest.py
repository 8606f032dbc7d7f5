"""The ``manifest`` step type: a JSON inventory of a directory with sizes and digests."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from wsrun.core.fileio import is_temp_name
from wsrun.core.hashing import ALGORITHMS, hash_each
from wsrun.core.spool import SortedSpool, Spool
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.checksum import StreamedWrite, apply_write, plan_write, plan_write_stream
from wsrun.steps.find import as_list, compile_globs, excluded

NAME = "manifest"
DOC = """Write a JSON manifest of every file below a directory: path, size, digest, mtime.

Archives and recipients check a delivery against it, and unlike a checksum list
it also records sizes and modification times in a format programs can read
(schemas/manifest.schema.json). The document is ``{"version": 1, "algorithm",
"root", "files": [{"path", "size", "<algorithm>", "mtime"}], "total_bytes",
"count"}`` with files sorted by path (relative to ``root``, ``/``-separated),
``root`` the directory's base name and ``mtime`` in UTC to the second
(``2024-05-01T12:00:00Z``). Regular files only: symbolic links, wsrun's
temporary files and the manifest itself are left out; leave out a checksum list
written beside it too (``exclude: SHA256SUMS``), or the two files, each covering
the other, change on every run. The file is written only when its content
changes. In a dry run, files an earlier step would create are read from their
planned content; their mtime is the view's guess (the source's for a copy, 1970
for generated files), and when a file's content is only known after the real run
the manifest's content and size are unknown (null in the plan).
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["root"],
    "properties": {
        "root": {
            "type": "string",
            "description": "Directory to inventory; relative paths are taken from the workdir.",
            "examples": ["delivery"],
        },
        "to": {
            "type": "string",
            "description": "Manifest file to write. Default: MANIFEST.json in root.",
            "examples": ["delivery/MANIFEST.json", "reports/run42.manifest.json"],
        },
        "algorithm": {
            "type": "string",
            "enum": list(ALGORITHMS),
            "default": "sha256",
            "description": "Hash algorithm; it also names each file's digest field.",
        },
        "exclude": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "default": [],
            "description": "Globs (as in `find`) of paths relative to root to leave out; "
            "excluding a directory leaves out everything below it.",
            "examples": [["scratch", "**/*.tmp"]],
        },
    },
}
EXAMPLES = [
    """- id: manifest
  uses: manifest
  with:
    root: delivery
    exclude: SHA256SUMS  # written by a later checksum step, which covers this manifest
""",
    """- id: archive_manifest
  uses: manifest
  with:
    root: "{{ inputs.product_dir }}"
    to: "{{ inputs.product_dir }}.manifest.json"
    algorithm: md5
    exclude: ["**/.*"]
""",
]
OUTPUTS = {
    "file": "absolute path of the manifest",
    "count": "number of files listed",
    "total_bytes": "total size in bytes of the files listed (null when unknown in a dry run)",
}


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    root = ctx.path(params["root"])
    return [ctx.path(params["to"]) if params.get("to") else os.path.join(root, "MANIFEST.json")]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    root = ctx.path(params["root"])
    algorithm = params.get("algorithm", "sha256")
    to = ctx.path(params["to"]) if params.get("to") else os.path.join(root, "MANIFEST.json")
    info = ctx.fs.stat(root)
    if info is None:
        raise StepError("no such directory", path=root)
    if not info.is_dir:
        raise StepError("not a directory", path=root)
    exclude = compile_globs(as_list(params.get("exclude"), []))

    # (rel, path, size, mtime_ns) sorted by rel; spooled past a few thousand files
    entries: SortedSpool[tuple[str, str, int, int]] = SortedSpool()
    walked = 0
    for rel, entry in ctx.fs.walk(root):
        ctx.check_deadline()
        path = os.path.join(root, rel)
        if not entry.is_file or path == to or is_temp_name(os.path.basename(rel)):
            continue
        if excluded(rel, exclude):
            continue
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise StepError("file name is not valid UTF-8", path=path) from None
        entries.append((rel, path, entry.size, entry.mtime_ns))
        walked += entry.size

    # (rel, size, digest, mtime) in path order; digest None when a dry run cannot know it
    files: Spool[tuple[str, int, str | None, str]] = Spool()
    total: int | None = 0
    hashed = hash_each(ctx, (p for _, p, _, _ in entries), algorithm, walked, len(entries))
    with contextlib.closing(hashed):
        for (rel, _, size, mtime_ns), (_, digest) in zip(entries, hashed, strict=True):
            if digest is None:
                total = None
                files.append((rel, size, None, ""))
                continue
            if total is not None:
                total += digest[1]
            files.append((rel, digest[1], digest[0], iso_utc(mtime_ns)))
    entries.close()
    count = len(files)
    outputs = {"file": to, "count": count, "total_bytes": total}
    doc = os.path.basename(root)
    pieces = None if total is None else lambda: _document(algorithm, doc, files, total, count)
    size = None if pieces is None else sum(map(len, pieces()))
    if not files.spilled:  # a short manifest is planned as content, as before
        content = None if pieces is None else b"".join(pieces())
        effects, mode = plan_write(ctx, to, content, size)
        files.close()
        return Plan(effects=effects, outputs=outputs, data=(to, content, mode))
    effects, mode = plan_write_stream(ctx, to, pieces, size)
    return Plan(effects=effects, outputs=outputs, data=StreamedWrite(to, mode, pieces, [files]))


def _document(
    algorithm: str, root: str, files: Iterable[tuple[str, int, Any, str]], total: int, count: int
) -> Iterator[bytes]:
    """The manifest's JSON, a file at a time: byte for byte what
    ``json.dumps(document, indent=2, ensure_ascii=False) + "\n"`` gives."""
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    yield (
        f'{{\n  "version": 1,\n  "algorithm": {dumps(algorithm)},\n  "root": {dumps(root)},\n'
        '  "files": '
    ).encode()
    key = dumps(algorithm)
    if not count:
        yield b"[],\n"
    else:
        sep = "[\n"
        for rel, size, digest, mtime in files:
            yield (
                f'{sep}    {{\n      "path": {dumps(rel)},\n      "size": {size},\n'
                f'      {key}: "{digest}",\n      "mtime": "{mtime}"\n    }}'
            ).encode()
            sep = ",\n"
        yield b"\n  ],\n"
    yield f'  "total_bytes": {total},\n  "count": {count}\n}}\n'.encode()


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


@functools.lru_cache(maxsize=64)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_utc(mtime_ns: int) -> str:
    """A modification time as ISO 8601 UTC to the second (the files of a tree
    mostly share a few seconds: those are formatted once)."""
    return _iso_second(mtime_ns // 1_000_000_000)
