"""The ``checksum`` step type: hash files and write a ``sha256sum -c`` compatible list."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from wsrun.core.effects import Effect, create_file
from wsrun.core.fileio import is_temp_name, write_bytes_atomic
from wsrun.core.fs import ContentUnknown
from wsrun.core.hashing import ALGORITHMS, hash_files
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.find import as_list, compile_globs, excluded

NAME = "checksum"
DOC = """Hash files and write a checksum list that ``sha256sum -c`` accepts.

Recipients verify a delivery with the standard tools (``sha256sum -c
SHA256SUMS`` run in the directory of the list), and later steps get every digest
from the outputs. Directories contribute every regular file below them (symbolic
links and wsrun's temporary files are skipped); the list itself is never listed.
Lines are ``<hex>  <path>`` sorted by path, the paths relative to
``relative_to``; names with a backslash, newline or carriage return are escaped
the way GNU coreutils does (tested against coreutils 9.1). A checksum list and a
manifest in the same directory must not both cover each other, or each run
changes both: exclude the list from the manifest (or the manifest from the
list). A file hashed before on this host (by this step, or by ``copy`` with
``checksum``) and unchanged since (same inode, size, mtime and ctime, see
``$WSRUN_HOME/resume.db``) is not read again, so a re-run after a kill hashes
only what it had not, and any file changed meanwhile is read again. Without ``to`` the step only computes the digests; with ``to`` and no
files it fails, because ``sha256sum -c`` rejects an empty list. Re-running when
the list is already up to date changes nothing. In a dry run, files an earlier
step would generate are hashed from their planned content; when that content is
only known after the real run (an archive being unpacked, a command's output),
their digests are null and so is the planned content of the list (its size is
still exact).
"""
#: ``wsrun resume`` plans this step again even when the run finished it, so a
#: source changed since is re-checked (wsrun.core.runner); unchanged files cost a stat.
RECHECK_ON_RESUME = True

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["paths"],
    "properties": {
        "paths": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ],
            "description": "File or directory, or a list of them, to hash; relative paths "
            "are taken from the workdir.",
            "examples": ["delivery", ["products/a.fits", "products/b.fits"]],
        },
        "to": {
            "type": "string",
            "description": "Checksum list to write. Without it the step only computes digests.",
            "examples": ["delivery/SHA256SUMS"],
        },
        "algorithm": {
            "type": "string",
            "enum": list(ALGORITHMS),
            "default": "sha256",
            "description": "Hash algorithm; check the list with the matching <algorithm>sum tool.",
        },
        "exclude": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "default": [],
            "description": "Globs (as in `find`) of paths to leave out, relative to each "
            "directory in `paths`; excluding a directory leaves out everything below it.",
            "examples": [["MANIFEST.json", "scratch"]],
        },
        "digests": {
            "type": "object",
            "additionalProperties": {"type": ["string", "null"]},
            "default": {},
            "description": "Digests already known, path -> hex digest (e.g. the `checksums` "
            "output of copy, which hashes while it copies): those files are not read again. "
            "Give only digests of `algorithm`; a null digest is one known only after the real "
            "run (a dry run).",
            "examples": ["{{ steps.copy.outputs.checksums }}"],
        },
        "relative_to": {
            "type": "string",
            "description": "Directory the listed paths are relative to (run the check "
            "from there). Default: the directory of `to`.",
        },
    },
}
EXAMPLES = [
    """- id: sums
  uses: checksum
  with:
    paths: delivery
    to: delivery/SHA256SUMS
    exclude: ["**/.*"]
""",
    """- id: digests
  uses: checksum
  with:
    paths: "{{ steps.images.outputs.files }}"
    algorithm: md5
""",
]
OUTPUTS = {
    "checksums": "absolute path -> hex digest of every hashed file "
    "(null in a dry run when the file's content is only known after the real run)",
    "file": "absolute path of the checksum list, or null without `to`",
}


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["to"])] if params.get("to") else []


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    algorithm = params.get("algorithm", "sha256")
    to = ctx.path(params["to"]) if params.get("to") else None
    if to is not None and params.get("relative_to") is None:
        base = os.path.dirname(to)
    else:
        base = ctx.path(params.get("relative_to", "."))
    paths = params["paths"]
    exclude = compile_globs(as_list(params.get("exclude"), []))
    files = collect_files(ctx, [paths] if isinstance(paths, str) else paths, to, exclude)
    known = {ctx.path(p): d for p, d in (params.get("digests") or {}).items()}
    unknown = [p for p in files if p not in known]
    digests = hash_files(ctx, unknown, algorithm, sum(files[p] for p in unknown), reuse=True)
    checksums = {
        p: known[p] if p in known else (d[0] if (d := digests[p]) else None) for p in files
    }
    outputs: dict[str, Any] = {"checksums": checksums, "file": to}
    if to is None:
        return Plan(outputs=outputs)
    if not files:
        raise StepError("no files to list (sha256sum -c rejects an empty list)", path=to)

    entries = sorted((os.path.relpath(p, base), h) for p, h in checksums.items())
    # The size is exact even when a dry run cannot know a digest: all have the same length.
    placeholder = "0" * (hashlib.new(algorithm).digest_size * 2)
    lines = [sums_line(name, h or placeholder) for name, h in entries]
    content = None if None in checksums.values() else b"".join(lines)
    effects, mode = plan_write(ctx, to, content, sum(map(len, lines)))
    return Plan(effects=effects, outputs=outputs, data=(to, content, mode))


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


def collect_files(
    ctx: StepContext, paths: list[str], to: str | None, exclude: re.Pattern[str] | None
) -> dict[str, int]:
    """Every file named or below a named directory -> its size, in order, once each.

    ``to`` (the list being written) is skipped inside directories and refused
    when named directly; ``exclude`` applies inside directories.
    """
    files: dict[str, int] = {}
    for given in paths:
        path = ctx.path(given)
        info = ctx.fs.stat(path)
        if info is None:
            raise StepError("no such file or directory", path=path)
        if info.is_file:
            if path == to:
                raise StepError("cannot list the checksum list itself", path=path)
            files[path] = info.size
        elif info.is_dir:
            for rel, entry in ctx.fs.walk(path):
                full = os.path.join(path, rel)
                if not entry.is_file or full == to or is_temp_name(os.path.basename(rel)):
                    continue
                if not excluded(rel, exclude):
                    files[full] = entry.size
        else:
            raise StepError("not a regular file or directory", path=path)
    return files


def sums_line(name: str, hexdigest: str) -> bytes:
    """One line of a coreutils checksum list; like coreutils, a name with a
    backslash, newline or carriage return is escaped and the line starts with ``\\``."""
    raw = os.fsencode(name)
    if b"\\" in raw or b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + hexdigest.encode() + b"  " + raw + b"\n"
    return hexdigest.encode() + b"  " + raw + b"\n"


# ---- shared by the steps that generate a file (checksum, manifest, template) ----


def plan_write(
    ctx: StepContext, path: str, content: bytes | None, size: int | None, mode: int | None = None
) -> tuple[list[Effect], int]:
    """The effects of writing ``content`` to ``path`` (none when it is already
    there), and the mode to write it with (``mode``, else the existing file's).

    ``content`` is None in a dry run when it is only known after the real run.
    """
    parent = os.path.dirname(path)
    if not ctx.fs.is_dir(parent):
        raise StepError("directory does not exist (create it in an earlier step)", path=parent)
    existing = ctx.fs.lstat(path)
    if existing is not None:
        if not existing.is_file:
            raise StepError("exists and is not a regular file; refusing to replace it", path=path)
        same_size = content is not None and existing.size == len(content)
        if same_size and mode in (None, existing.mode) and _read(ctx, path) == content:
            return [], existing.mode
    write_mode = mode if mode is not None else existing.mode if existing else 0o644
    return [create_file(path, bytes=size, content=content, mode=mode)], write_mode


def _read(ctx: StepContext, path: str) -> bytes | None:
    try:
        with ctx.fs.open(path) as f:
            return f.read()
    except ContentUnknown:
        return None


def apply_write(plan: Plan) -> Result:
    """Write the planned content (``plan.data`` is ``(path, content, mode)``)."""
    if plan.effects:
        path, content, mode = plan.data
        if content is None:
            raise StepError("content unknown: a dry-run plan cannot be applied", path=path)
        write_bytes_atomic(path, content, mode)
    return Result(effects=plan.effects, outputs=plan.outputs)
