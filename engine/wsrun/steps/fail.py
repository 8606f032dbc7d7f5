"""The ``fail`` step type: stop the run with a message the operator can act on."""

from __future__ import annotations

from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "fail"
DOC = """Stop the run with a clear message, usually under an ``if:``.

Recipes use it to refuse a request before anything changes: a duplicate
launch, an entity in the wrong state, a combination of inputs that makes no
sense. The run fails like any failed step (exit status 1, the message on one
line, ``on_failure`` steps run); the dry run fails the same way. Under
``wsrun worker`` the message that started the run goes dead at once, unless
``transient: true`` says the refusal may pass (the entity is busy): then the
message is retried with back-off, not before ``retry_after`` seconds.
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
        "transient": {
            "description": "The refusal may pass: `wsrun worker` retries the message "
            "with back-off instead of parking it dead.",
            "type": "boolean",
            "default": False,
        },
        "retry_after": {
            "description": "With transient: seconds before the message is tried again "
            "(at least; the bus's back-off may be longer).",
            "type": "number",
            "minimum": 0,
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
    raise StepError(
        params["message"],
        path=params.get("path") or None,
        transient=bool(params.get("transient")),
        retry_after=params.get("retry_after"),
    )


def apply(plan: Plan, ctx: StepContext) -> Result:
    raise AssertionError("plan always fails")
