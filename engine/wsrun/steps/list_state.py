"""The ``list-state`` step type: the entities of a kind in a given state."""

from __future__ import annotations

from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.stores.state import StateError, open_state_store, state_url

NAME = "list-state"
DOC = """List the entities of a kind, optionally only those in a state (and substate).

Read only. A work list comes from it: the OUSs ReadyForReview a QA2 reviewer
chooses from, the requests waiting for an operator. Entities come most
recently updated first, at most ``limit`` of them. It reads the store as it
is: a dry run does not see states that earlier steps of the same run would
set.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind"],
    "properties": {
        "kind": {
            "description": "The kind of entity.",
            "type": "string",
            "pattern": "^[A-Za-z][A-Za-z0-9_.-]*$",
            "examples": ["ous"],
        },
        "state": {
            "description": "Only entities in this state (default: any).",
            "type": ["string", "null"],
            "examples": ["ReadyForReview"],
        },
        "substate": {
            "description": "Only entities in this substate (default: any).",
            "type": ["string", "null"],
            "examples": ["ProductsIngested"],
        },
        "limit": {
            "description": "At most this many entities.",
            "type": "integer",
            "minimum": 1,
            "default": 100,
        },
        "store": {
            "description": "The state store URL (default as for set-state).",
            "type": ["string", "null"],
            "examples": ["sqlite:///srv/wsrun/state.db"],
        },
    },
}

EXAMPLES = [
    """- id: to_review
  uses: list-state
  with: {kind: ous, state: ReadyForReview}
""",
]

OUTPUTS = {
    "ids": "the ids of the entities found, most recently updated first",
    "entities": "the entities found: {kind, id, state, substate, updated, attributes, version}",
    "count": "how many were found",
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    try:
        store = open_state_store(state_url(params.get("store"), ctx.env))
    except StateError as e:
        raise StepError(str(e)) from None
    try:
        found = store.list(
            kind=params["kind"],
            state=params.get("state"),
            substate=params.get("substate"),
            limit=int(params.get("limit", 100)),
        )
    except StateError as e:
        raise StepError(str(e)) from None
    finally:
        store.close()
    return Plan(
        outputs={
            "ids": [e.id for e in found],
            "entities": [e.to_json() for e in found],
            "count": len(found),
        }
    )


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
