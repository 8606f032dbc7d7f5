"""The ``fail`` step type: stop the run with a message the operator can act on."""

from __future__ import annotations

from typing import Any

from wsrun.step import Plan, Result, StepContext, StepError

NAME = "fail"
DOC = """Stop the run with a clear message, usually under an ``if:``.

Recipes use it to refuse a request before anything changes: a duplicate
launch, an entity in the wrong state, a combination of inputs that makes no
sense. The run fails like any failed step (exit status 1, the message on one
line, ``on_failure`` steps run); the dry run fails the same way.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["message"],
    "properties": {
        "message": {
            "description": "Why the run stops, and what to do about it.",
            "type": "string",
            "minLength": 1,
            "examples": ["{{ inputs.ous }} is already {{ steps.ous.outputs.state }}"],
        },
        "path": {
            "description": "The file or value at fault, printed before the message.",
            "type": ["string", "null"],
            "examples": ["{{ inputs.ous }}"],
        },
    },
}

EXAMPLES = [
    """- id: refuse
  if: steps.ous.outputs.state not in ['ProcessingProblem', none]
  uses: fail
  with:
    message: "already {{ steps.ous.outputs.state }}; only a new OUS or one in ProcessingProblem can be launched"
    path: "{{ inputs.ousUID }}"
""",
]

OUTPUTS: dict[str, str] = {}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    raise StepError(params["message"], path=params.get("path") or None)


def apply(plan: Plan, ctx: StepContext) -> Result:
    raise AssertionError("plan always fails")
