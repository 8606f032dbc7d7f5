"""The ``symlink`` step type: create or update a symbolic link, atomically."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.effects import Effect, create_dir, create_symlink, remove
from wsrun.core.fileio import temp_path
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.move import missing_parents

NAME = "symlink"
DOC = """Create a symbolic link, or point an existing one somewhere else, atomically.

Use it to publish a "latest" pointer to the newest product, or to expose a
product in a delivery area without copying it. The link is made under a
temporary name and renamed over ``link``, so readers see the old target or the
new one, never nothing. A link already pointing at ``target`` is left alone.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["target", "link"],
    "properties": {
        "target": {
            "description": "What the link points at. Stored as given (so a relative target is "
            "taken from the link's directory, as the OS does), unless `relative` is set, which "
            "takes it from the working directory. It need not exist yet.",
            "type": "string",
            "minLength": 1,
            "examples": ["archive/2024/run42"],
        },
        "link": {
            "description": "Where the link is created. Missing parent directories are created.",
            "type": "string",
            "minLength": 1,
            "examples": ["archive/latest"],
        },
        "relative": {
            "description": "Take `target` from the working directory and store it as a path "
            "relative to the link's directory, so the pair can be moved or mounted elsewhere "
            "together.",
            "type": "boolean",
            "default": False,
        },
        "force": {
            "description": "Replace a link pointing elsewhere, a file, or an empty directory at "
            "`link`. A non-empty directory is never replaced.",
            "type": "boolean",
            "default": False,
        },
    },
}

EXAMPLES = [
    """- id: latest
  uses: symlink
  with:
    target: archive/{{ inputs.run }}
    link: archive/latest
    relative: true
    force: true
""",
]

OUTPUTS = {
    "link": "the link's absolute path",
    "target": "the target as stored in the link",
}


@dataclass
class SymlinkJob:
    link: str
    target: str
    parents: list[str] = field(default_factory=list)
    remove_dir: bool = False


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["link"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    link = ctx.path(params["link"])
    target = params["target"]
    if params.get("relative", False):
        target = os.path.relpath(ctx.path(target), os.path.dirname(link))
    outputs = {"link": link, "target": target}
    force = params.get("force", False)
    job = SymlinkJob(link, target)
    effects: list[Effect] = []
    info = ctx.fs.lstat(link)
    if info is None:
        job.parents = missing_parents(ctx.fs, link)
        effects.extend(create_dir(p) for p in job.parents)
    elif info.is_symlink:
        if info.target == target:
            return Plan(outputs=outputs)
        if not force:
            raise StepError(
                f"is a link to {info.target}, not {target}; set force: true to replace it",
                path=link,
            )
    elif info.is_dir:
        if ctx.fs.listdir(link):
            raise StepError("is a directory that is not empty; refusing to replace it", path=link)
        if not force:
            raise StepError("is a directory; set force: true to replace it", path=link)
        effects.append(remove(link, bytes=0))
        job.remove_dir = True
    elif not force:
        raise StepError("exists and is not a link; set force: true to replace it", path=link)
    if not ctx.fs.exists(os.path.join(os.path.dirname(link), target)):
        ctx.log(f"{link}: target {target} does not exist (yet)")
    effects.append(create_symlink(link, target))
    return Plan(effects=effects, outputs=outputs, data=job)


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: SymlinkJob | None = plan.data
    if job is not None:
        for parent in job.parents:
            os.mkdir(parent)
        tmp = temp_path(job.link)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a killed run's leftover
        os.symlink(job.target, tmp)
        try:
            if job.remove_dir:
                os.rmdir(job.link)  # rename(2) cannot put a link over a directory
            os.replace(tmp, job.link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return Result(effects=plan.effects, outputs=plan.outputs)
