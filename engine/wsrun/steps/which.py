"""The ``which`` step type: find programs on PATH, so a recipe can do without one."""

from __future__ import annotations

import shutil
from typing import Any

from wsrun.core.step import Plan, Result, StepContext

NAME = "which"
DOC = """Look programs up on PATH (as ``which`` does), changing nothing.

Recipes use it for optional tools: the Distillery makes OCR text only when
``tesseract`` is installed, and notes that it skipped OCR otherwise. Names
containing ``/`` are checked as paths. The lookup happens while planning, so a
dry run decides the same way as the real run.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["programs"],
    "properties": {
        "programs": {
            "description": "The program names (or paths) to look for.",
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 1},
            "examples": [["tesseract"], ["drush", "rsync"]],
        },
    },
}

EXAMPLES = [
    """- id: tools
  uses: which
  with: {programs: [tesseract]}
- id: ocr
  if: steps.tools.outputs.found.tesseract
  uses: shell
  with: {argv: ["{{ steps.tools.outputs.found.tesseract }}", page.tif, page]}
"""
]

OUTPUTS = {
    "found": "{program: absolute path, or null when it is not installed}",
    "missing": "the programs not found",
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    path = ctx.env.get("PATH")
    found = {name: shutil.which(name, path=path) for name in params["programs"]}
    missing = [name for name, where in found.items() if where is None]
    return Plan(outputs={"found": found, "missing": missing})


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
