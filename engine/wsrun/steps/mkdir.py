"""The ``mkdir`` step type: make sure directories exist."""

from __future__ import annotations

import os
from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.step import PATHS, Plan, Result, StepContext, StepError

NAME = "mkdir"
DOC = """Make sure directories exist, with their parents (like ``mkdir -p``).

Use it to lay out a delivery or staging area before other steps fill it, or
to give a directory a specific mode (only directories this step creates get
``mode``; existing ones are left as they are). An existing directory is fine;
a file in the way is an error.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "description": "A directory to create, or a list of them; parents are created too.",
            **PATHS,
            "examples": ["delivery/{{ inputs.user }}", ["staging/in", "staging/out"]],
        },
        "mode": {
            "description": "Permissions of the directories named in `path` when this step "
            "creates them (parents get the default). An octal string or an integer.",
            "oneOf": [
                {"type": "string", "pattern": "^(0o?)?[0-7]{1,4}$"},
                {"type": "integer", "minimum": 0, "maximum": 4095},
            ],
            "examples": ["0755", "2770"],
        },
    },
}

EXAMPLES = [
    """- id: layout
  uses: mkdir
  with:
    path: ["staging/{{ inputs.run }}/raw", "staging/{{ inputs.run }}/qa"]
""",
    """- id: dropbox
  uses: mkdir
  with: {path: incoming, mode: "2770"}
""",
]

OUTPUTS = {
    "paths": "the directories asked for, as absolute paths",
    "created": "the directories this step creates (parents included), outermost first",
}


def parse_mode(value: str | int) -> int:
    """An integer mode from YAML: 493, "0755", "755" or "0o755"."""
    if isinstance(value, int):
        return value
    text = value.lower().removeprefix("0o")
    try:
        return int(text, 8)
    except ValueError:
        raise StepError(f"not an octal mode: {value!r}") from None


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    paths = params["path"]
    if isinstance(paths, str):
        paths = [paths]
    wanted = list(dict.fromkeys(ctx.path(p) for p in paths))
    mode = parse_mode(params["mode"]) if "mode" in params else None
    planned: dict[str, Effect] = {}
    for path in wanted:
        missing = []
        current = path
        while current not in planned and (info := ctx.fs.stat(current)) is None:
            missing.append(current)
            current = os.path.dirname(current)
        if current not in planned and info is not None and not info.is_dir:
            raise StepError("exists and is not a directory", path=current)
        for p in reversed(missing):
            planned[p] = Effect("create_dir", p, mode=mode if p == path else None)
    for path in wanted:
        if path in planned and mode is not None:
            planned[path].mode = mode  # also a parent of another listed path
    effects = list(planned.values())
    outputs = {"paths": wanted, "created": [e.path for e in effects]}
    return Plan(effects=effects, outputs=outputs)


def apply(plan: Plan, ctx: StepContext) -> Result:
    for effect in plan.effects:
        try:
            os.mkdir(effect.path)
        except FileExistsError:
            if not os.path.isdir(effect.path):
                raise StepError("exists and is not a directory", path=effect.path) from None
            continue  # made by someone else since planning: leave its mode alone
        if effect.mode is not None:
            os.chmod(effect.path, effect.mode)  # mkdir's mode is cut by the umask
    return Result(effects=plan.effects, outputs=plan.outputs)
