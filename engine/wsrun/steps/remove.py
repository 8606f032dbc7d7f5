"""The ``remove`` step type: remove files, symlinks and directory trees."""

from __future__ import annotations

import os
from typing import Any

from wsrun.core.effects import Effect, remove
from wsrun.core.removal import remove_tree
from wsrun.core.step import PATHS, Plan, Result, StepContext, StepError

NAME = "remove"
DOC = """Remove files, symlinks and whole directory trees (like ``rm -rf``).

Use it to clean a staging area after delivery or to drop a stale product
before rebuilding it. Symlinks are removed, never followed. A path that is
already gone is fine (nothing to do) unless ``must_exist`` is set, so the step
can be re-run. Read-only directories inside a tree (as archives often
unpack) are made writable so the tree can go. Progress counts the files
removed against the plan's count (a tree of a million takes minutes).
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "description": "A path to remove, or a list of them.",
            **PATHS,
            "examples": ["staging/run42", ["tmp/a.part", "tmp/b.part"]],
        },
        "must_exist": {
            "description": "Fail if a path does not exist (by default a missing path is "
            "already removed, and fine).",
            "type": "boolean",
            "default": False,
        },
    },
}

EXAMPLES = [
    """- id: clean
  uses: remove
  with:
    path: staging/{{ inputs.run }}
""",
    """- id: drop_partials
  uses: remove
  with:
    path: "{{ steps.find.outputs.files }}"
""",
]

OUTPUTS = {
    "removed": "absolute paths that were (or, in a dry run, would be) removed",
    "bytes": "total size of the regular files removed",
}


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    paths = params["path"]
    return [ctx.path(p) for p in ([paths] if isinstance(paths, str) else paths)]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    paths = params["path"]
    if isinstance(paths, str):
        paths = [paths]
    wanted = list(dict.fromkeys(ctx.path(p) for p in paths))
    chosen = set(wanted)
    effects: list[Effect] = []
    files = 0  # and symlinks: what apply reports removing, for its progress
    for path in wanted:
        if _inside_any(path, chosen):
            continue  # goes with a parent in the list
        _refuse_dangerous(path, ctx)
        info = ctx.fs.lstat(path)
        if info is None:
            if params.get("must_exist", False):
                raise StepError("no such file or directory", path=path)
            continue
        if info.is_dir:
            size = 0
            for _, found in ctx.fs.walk(path):
                if not found.is_dir:
                    files += 1
                    size += found.size if found.is_file else 0
        else:
            files += 1
            size = info.size if info.is_file else 0
        effects.append(remove(path, bytes=size))
    outputs = {"removed": [e.path for e in effects], "bytes": sum(e.bytes or 0 for e in effects)}
    return Plan(effects=effects, outputs=outputs, data=files)


def _inside_any(path: str, others: set[str]) -> bool:
    parent = os.path.dirname(path)
    while parent != path:
        if parent in others:
            return True
        path, parent = parent, os.path.dirname(parent)
    return False


def _refuse_dangerous(path: str, ctx: StepContext) -> None:
    """A templating slip must not wipe the filesystem or the run's own directory."""
    workdir = ctx.path(".")
    if path == os.path.dirname(path) or (workdir + os.sep).startswith(path + os.sep):
        raise StepError(
            "refusing to remove the root, the working directory or a parent of it", path=path
        )


def apply(plan: Plan, ctx: StepContext) -> Result:
    task = ctx.progress.task("remove", total_files=plan.data)
    try:
        for effect in plan.effects:
            ctx.check_deadline()
            remove_tree(effect.path, lambda n: task.advance(files=n))
    finally:
        task.close()
    return Result(effects=plan.effects, outputs=plan.outputs)
