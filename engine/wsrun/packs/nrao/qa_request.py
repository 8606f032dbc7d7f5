"""The ``qa-request`` step type: where a workflow's directories are, and what a
QA delivery or retrieval still has to do with them."""

from __future__ import annotations

import json
import os
from typing import Any

from wsrun.core.fileio import is_temp_name, temp_path
from wsrun.core.fs import FileInfo, WorldView
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "qa-request"
DOC = """Read a workflow's metadata.json and say what a QA delivery or retrieval still has to do.

The ``conveyor`` tool (recipe ``nrao/conveyor``, docs/conveyor.md) moves a
request's ``rawdata/``, ``products/`` and ``working/`` between its parent
processing directory (``destinationDirectory`` in metadata.json) and
``<root>/<area>/<request>`` (area ``qa2`` or ``image-qa``, request the parent's
base name), leaving a symlink in the parent for each moved directory. This step
only reads: it finds each directory's state and returns the work left as lists
the ``move``, ``symlink`` and ``remove`` steps take, so a run killed at any
point is completed by running it again.

Per directory, for ``deliver``: in the parent (move it, then link it), moved
but not linked (link it), linked to the QA directory (nothing). For
``retrieve`` and ``qa-fail``: linked (remove the link, move it back), link gone
(move it back), home (nothing); the emptied QA directory is then removed
(``retrieve`` keeps one that holds other content, ``qa-fail`` refuses it). A
copy left by a move across filesystems killed before it removed its source
(every file of one side also on the other, with the same size and mtime) is
removed, and so are the temporary names of a killed move or symlink step.
Everything else is refused before anything changes: a missing or unreadable
metadata file or one without ``destinationDirectory``, a missing parent
directory or QA area, a symlink that is not ours, a directory missing from both
places, a QA directory holding other content.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["metadata", "root", "operation", "area"],
    "properties": {
        "metadata": {
            "description": "The workflow's metadata.json; its `destinationDirectory` names the "
            "parent processing directory.",
            "type": "string",
            "minLength": 1,
            "examples": ["/lustre/workspaces/spool/tmpa1b2c3/metadata.json"],
        },
        "root": {
            "description": "The workspaces root, holding spool/, qa2/ and image-qa/.",
            "type": "string",
            "minLength": 1,
            "examples": ["/lustre/workspaces"],
        },
        "operation": {
            "description": "What to plan: deliver to the QA area, retrieve from it, or "
            "retrieve after a QA fail (which also removes the emptied QA directory).",
            "enum": ["deliver", "retrieve", "qa-fail"],
        },
        "area": {
            "description": "The QA area below root (qa2 or image-qa), or a list of areas to "
            "look for the request in (for qa-fail, which may follow either).",
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            ],
            "examples": ["qa2", ["qa2", "image-qa"]],
        },
        "directories": {
            "description": "The directories of the parent that go to the QA area.",
            "type": "array",
            "items": {"type": "string", "pattern": "^[^/]+$"},
            "default": ["rawdata", "products", "working"],
        },
        "weblog": {
            "description": "The weblog archive, relative to the parent directory.",
            "type": "string",
            "default": "products/weblog.tgz",
        },
    },
}

EXAMPLES = [
    """- id: request
  uses: qa-request
  with:
    metadata: "{{ inputs.deliver }}"
    root: "{{ settings.workspaces_root }}"
    operation: deliver
    area: qa2
""",
]

OUTPUTS = {
    "parent": "the parent processing directory",
    "request": "the request directory's name (the parent's base name)",
    "qa_dir": "the request's directory in the QA area",
    "move": "directories to move, each {source, to}",
    "link": "symlinks to make in the parent, each {link, target}",
    "unlink": "symlinks in the parent to remove",
    "leftovers": "copies left by an interrupted move across filesystems, to remove",
    "weblog_tar": "where the weblog archive is now (deliver only; null when there is none)",
    "weblog": "the cached, browsable weblog directory (<parent>/weblog)",
    "remove_qa_dir": "the QA directory to remove once emptied by a retrieval (empty list or one "
    "path; empty when it holds other content)",
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    metadata_path = ctx.path(params["metadata"])
    parent = _parent(metadata_path, ctx)
    pinfo = ctx.fs.lstat(parent)
    if pinfo is None or not pinfo.is_dir:
        raise StepError("parent directory does not exist (destinationDirectory)", path=parent)
    request = os.path.basename(parent)
    root = ctx.path(params["root"])
    operation = params["operation"]
    names = params.get("directories", ["rawdata", "products", "working"])
    areas = params["area"] if isinstance(params["area"], list) else [params["area"]]
    for area in areas:
        if not ctx.fs.is_dir(os.path.join(root, area)):
            raise StepError(
                "QA area does not exist (check the workspaces root)", path=os.path.join(root, area)
            )
    qa_dir = _qa_dir(ctx.fs, root, areas, parent, request, names)
    out: dict[str, Any] = {
        "parent": parent,
        "request": request,
        "qa_dir": qa_dir,
        "move": [],
        "link": [],
        "unlink": [],
        "leftovers": [],
        "weblog_tar": None,
        "weblog": os.path.join(parent, "weblog"),
        "remove_qa_dir": [],
    }
    qinfo = ctx.fs.lstat(qa_dir)
    if qinfo is not None and not qinfo.is_dir:
        raise StepError("exists and is not a directory", path=qa_dir)
    others: list[str] = []
    if qinfo is not None:
        others = [n for n in ctx.fs.listdir(qa_dir) if n not in names and not is_temp_name(n)]
        if others and operation in ("deliver", "qa-fail"):
            raise StepError(
                f"QA directory already holds other content ({', '.join(others[:3])})", path=qa_dir
            )
    for name in names:
        _plan_one(ctx.fs, operation, os.path.join(parent, name), os.path.join(qa_dir, name), out)
    if operation == "deliver":
        weblog = os.path.join(parent, params.get("weblog", "products/weblog.tgz"))
        moved = os.path.join(qa_dir, os.path.relpath(weblog, parent))
        for candidate in (weblog, moved):
            if ctx.fs.is_file(candidate):
                out["weblog_tar"] = candidate
                break
        else:
            ctx.log(f"{weblog}: no weblog archive; the weblog is not cached")
    if operation != "deliver" and qinfo is not None:
        if others:
            ctx.log(f"{qa_dir}: kept, it holds other content ({', '.join(others[:3])})")
        else:
            out["remove_qa_dir"] = [qa_dir]
    return Plan(outputs=out)


def _parent(metadata_path: str, ctx: StepContext) -> str:
    """The parent processing directory named by the metadata file."""
    try:
        with ctx.fs.open(metadata_path) as f:
            metadata = json.load(f)
    except FileNotFoundError:
        raise StepError("metadata file does not exist", path=metadata_path) from None
    except (OSError, ValueError) as e:
        raise StepError(f"cannot read the metadata file: {e}", path=metadata_path) from None
    parent = metadata.get("destinationDirectory") if isinstance(metadata, dict) else None
    if not isinstance(parent, str) or not os.path.isabs(parent):
        raise StepError(
            "metadata has no destinationDirectory (an absolute path)", path=metadata_path
        )
    parent = os.path.normpath(parent)
    if parent == os.path.dirname(parent):
        raise StepError("destinationDirectory is the root directory", path=metadata_path)
    return parent


def _qa_dir(
    fs: WorldView, root: str, areas: list[str], parent: str, request: str, names: list[str]
) -> str:
    """The request's QA directory: in the only area given, else in the area that
    holds the request (its directory is not empty, or the parent's links point there)."""
    candidates = [os.path.join(root, a, request) for a in areas]
    if len(candidates) == 1:
        return candidates[0]
    found = []
    for qa_dir in candidates:
        linked = any(
            _link_target(fs, os.path.join(parent, n)) == os.path.join(qa_dir, n) for n in names
        )
        if linked or (fs.is_dir(qa_dir) and fs.listdir(qa_dir)):
            found.append(qa_dir)
    if len(found) > 1:
        raise StepError(
            f"the request is in more than one QA area ({', '.join(found)})", path=parent
        )
    return found[0] if found else candidates[0]


def _link_target(fs: WorldView, path: str) -> str | None:
    """Where the symlink at ``path`` points (made absolute), or None if it is no symlink."""
    info = fs.lstat(path)
    if info is None or not info.is_symlink or info.target is None:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(path), info.target))


def _plan_one(fs: WorldView, operation: str, home: str, qa: str, out: dict[str, Any]) -> None:
    """Add what is left to do for one directory to the step's outputs."""
    # Temp names a killed move or symlink step left beside either place.
    out["leftovers"].extend(t for t in (temp_path(home), temp_path(qa)) if fs.lstat(t))
    h, q = fs.lstat(home), fs.lstat(qa)
    if q is not None and not q.is_dir:
        raise StepError("exists and is not a directory", path=qa)
    if h is not None and h.is_symlink:
        if _link_target(fs, home) != qa:
            raise StepError(
                f"is a symlink to {h.target}, not to {qa}; refusing to touch it", path=home
            )
        if q is None:
            raise StepError(f"is a symlink to {qa}, which does not exist", path=home)
        if operation != "deliver":
            out["unlink"].append(home)
            out["move"].append({"source": qa, "to": home})
        return
    if h is not None and not h.is_dir:
        raise StepError("exists and is not a directory", path=home)
    if h is None and q is None:
        raise StepError(f"is missing, and not in the QA area ({qa}) either", path=home)
    if h is not None and q is not None:
        # Both real: a move across filesystems was killed before removing its source.
        source, target = (home, qa) if operation == "deliver" else (qa, home)
        if not _covered(fs, source, target):
            raise StepError(f"both {home} and {qa} exist with different content", path=qa)
        out["leftovers"].append(source)
        h, q = (None, q) if operation == "deliver" else (h, None)
    if operation == "deliver":
        if h is not None:
            out["move"].append({"source": home, "to": qa})
        out["link"].append({"link": home, "target": qa})
    elif h is None:
        out["move"].append({"source": qa, "to": home})


def _covered(fs: WorldView, source: str, target: str) -> bool:
    """Whether every entry below ``source`` is also below ``target``, same kind,
    and files with the same size and mtime: then ``source`` holds nothing that
    is not safe at ``target``."""
    have = {rel: info for rel, info in fs.walk(target)}
    for rel, info in fs.walk(source):
        other = have.get(rel)
        if other is None or not _same(info, other):
            return False
    return True


def _same(a: FileInfo, b: FileInfo) -> bool:
    if a.kind != b.kind:
        return False
    if a.is_file:
        return a.size == b.size and a.mtime_ns // 10**9 == b.mtime_ns // 10**9
    return a.target == b.target if a.is_symlink else True


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
