"""The ``wait-files`` step type: wait until files another process delivers are all there."""

from __future__ import annotations

import os
import time
from typing import Any

from wsrun.core.step import PATHS, Plan, Result, StepContext, StepError

NAME = "wait-files"
DOC = """Wait until every named file exists (up to a timeout), then go on.

Use it where another process or host delivers files asynchronously (a
replicated cache filled by rsync, an upload) and the recipe must not start
on a partial set. Writers that rename complete files into place (rsync,
wsrun) make "the file exists" mean "the file is whole". The step changes
nothing; on timeout it fails naming the files still missing, so a worker's
retry can try again later. A dry run waits the same way, looking also at
files earlier steps would create.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["paths"],
    "properties": {
        "paths": {
            "description": "The files (or directories) that must all exist.",
            **PATHS,
            "examples": [["{{ vars.products }}/product-0.data", "{{ vars.products }}/report.xml"]],
        },
        "base": {
            "description": "The directory relative `paths` are taken from (default: the workdir).",
            "type": ["string", "null"],
            "examples": ["{{ inputs.cache }}/products"],
        },
        "timeout": {
            "description": "Seconds to wait at most (0: only look once).",
            "type": "number",
            "minimum": 0,
            "default": 60,
            "examples": [30],
        },
        "interval": {
            "description": "Seconds between two looks.",
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 0.05,
        },
    },
}

EXAMPLES = [
    """- id: replicated
  uses: wait-files
  with:
    base: "{{ vars.products }}"
    paths: ["product-0.data", "product-1.data"]
    timeout: 120
""",
]

OUTPUTS = {"paths": "the files waited for, as absolute paths", "waited": "seconds waited"}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    paths = params["paths"]
    base = ctx.path(params.get("base") or ".")
    names = [paths] if isinstance(paths, str) else paths
    wanted = [os.path.normpath(os.path.join(base, p)) for p in names]
    timeout = float(params.get("timeout", 60))
    remaining = ctx.remaining()
    if remaining is not None:
        timeout = min(timeout, remaining)
    interval = float(params.get("interval", 0.05))
    started = time.monotonic()
    missing = [p for p in wanted if not ctx.fs.exists(p)]
    while missing and time.monotonic() - started < timeout:
        time.sleep(interval)
        missing = [p for p in missing if not os.path.exists(p)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise StepError(f"still missing after {timeout:g} s{more}", path=missing[0], transient=True)
    return Plan(outputs={"paths": wanted, "waited": round(time.monotonic() - started, 3)})


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
