"""The ``wait-state`` step type: wait until an entity reaches a state."""

from __future__ import annotations

import time
from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.get_state import entity_outputs, read_entity
from wsrun.stores.state.base import Entity

NAME = "wait-state"
DOC = """Wait until an entity is in one of the given states (and substate), or time out.

Polls the state store every ``poll`` seconds; the entity may not exist yet
(another process creates it). Fails with the entity's last state when
``timeout`` passes first (or the step's own ``timeout:``). Changes nothing.
In a dry run it does not wait: it reports whether the state the earlier
planned steps would leave already satisfies it (``reached``).
"""

_NAME = {"type": "string", "minLength": 1}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "id", "until"],
    "properties": {
        "kind": {
            "description": "The kind of entity.",
            "type": "string",
            "pattern": "^[A-Za-z][A-Za-z0-9_.-]*$",
            "examples": ["ous"],
        },
        "id": {"description": "The entity's id.", **_NAME, "examples": ["{{ inputs.ous }}"]},
        "until": {
            "description": "The state to wait for, or a list of states (any of them).",
            "oneOf": [_NAME, {"type": "array", "minItems": 1, "items": _NAME}],
            "examples": ["Delivered", ["ReadyForReview", "ProcessingProblem"]],
        },
        "substate": {
            "description": "Also wait for this substate.",
            **_NAME,
            "examples": ["ProductsIngested"],
        },
        "timeout": {
            "description": "Seconds to wait at most (default 300).",
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 300,
            "examples": [60, 0.5],
        },
        "poll": {
            "description": "Seconds between looks at the store (default 0.2).",
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 0.2,
            "examples": [1],
        },
        "store": {
            "description": "The state store URL (default as for set-state).",
            "type": ["string", "null"],
            "examples": ["sqlite:///srv/wsrun/state.db"],
        },
    },
}

EXAMPLES = [
    """- id: delivered
  uses: wait-state
  with: {kind: ous, id: "{{ inputs.ous }}", until: Delivered, timeout: 600}
""",
    """- id: processed
  uses: wait-state
  with:
    kind: ous
    id: "{{ inputs.ous }}"
    until: [ReadyForReview, ProcessingProblem]
    poll: 1
""",
]

OUTPUTS = {
    "reached": "whether the entity is in the awaited state (always true after a real run)",
    "waited": "seconds spent waiting (0 in a dry run)",
    "exists": "whether the entity exists",
    "state": "its state",
    "substate": "its substate",
    "attributes": "its attributes",
    "updated": "when it last changed, seconds since the epoch",
    "version": "its version (0 if it does not exist)",
    "entity": "the whole entity, or None",
}


def _reached(entity: Entity | None, params: dict[str, Any]) -> bool:
    until = params["until"]
    states = [until] if isinstance(until, str) else until
    return (
        entity is not None
        and entity.state in states
        and ("substate" not in params or entity.substate == params["substate"])
    )


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    if not ctx.dry_run:
        return Plan(data=params)  # the real run waits in apply
    entity = read_entity(params, ctx)
    outputs = {"reached": _reached(entity, params), "waited": 0.0, **entity_outputs(entity)}
    return Plan(outputs=outputs)


def apply(plan: Plan, ctx: StepContext) -> Result:
    params: dict[str, Any] = plan.data
    started = time.monotonic()
    until = started + float(params.get("timeout", 300))
    if ctx.deadline is not None:
        until = min(until, ctx.deadline)
    poll = float(params.get("poll", 0.2))
    while True:
        entity = read_entity(params, ctx)
        now = time.monotonic()
        if _reached(entity, params):
            outputs = {"reached": True, "waited": round(now - started, 3), **entity_outputs(entity)}
            return Result(outputs=outputs)
        if now >= until:
            wanted = (
                params["until"]
                if isinstance(params["until"], str)
                else " or ".join(params["until"])
            )
            if "substate" in params:
                wanted += f" (substate {params['substate']})"
            seen = (
                "does not exist"
                if entity is None
                else f"is {entity.state}" + (f" ({entity.substate})" if entity.substate else "")
            )
            raise StepError(
                f"timed out after {now - started:.1f}s waiting for {params['kind']} "
                f"{params['id']} to reach {wanted}; it {seen}",
                transient=True,
            )
        time.sleep(max(0.0, min(poll, until - now)))
