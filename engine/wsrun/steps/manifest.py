"""The ``manifest`` step type: a JSON inventory of a directory with sizes and digests."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from wsrun.core.fileio import is_temp_name
from wsrun.core.hashing import ALGORITHMS, hash_files
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.checksum import apply_write, plan_write
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

    entries: dict[str, tuple[str, int, int]] = {}  # rel -> (path, size, mtime_ns)
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
        entries[rel] = (path, entry.size, entry.mtime_ns)

    digests = hash_files(
        ctx, [p for p, _, _ in entries.values()], algorithm, sum(s for _, s, _ in entries.values())
    )
    content = None
    total: int | None = None
    if None not in digests.values():
        files = []
        total = 0
        for rel in sorted(entries):
            hexdigest, size = digests[entries[rel][0]]  # type: ignore[misc]
            mtime = iso_utc(entries[rel][2])
            files.append({"path": rel, "size": size, algorithm: hexdigest, "mtime": mtime})
            total += size
        document = {
            "version": 1,
            "algorithm": algorithm,
            "root": os.path.basename(root),
            "files": files,
            "total_bytes": total,
            "count": len(files),
        }
        content = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    effects, mode = plan_write(ctx, to, content, None if content is None else len(content))
    outputs = {"file": to, "count": len(entries), "total_bytes": total}
    return Plan(effects=effects, outputs=outputs, data=(to, content, mode))


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


def iso_utc(mtime_ns: int) -> str:
    """A modification time as ISO 8601 UTC to the second."""
    return datetime.fromtimestamp(mtime_ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
