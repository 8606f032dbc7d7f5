"""The ``get-state`` step type: read an entity from the state store."""

from __future__ import annotations

from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.stores.state import Entity, StateError, open_state_store, state_url
from wsrun.stores.state.planning import planned_entity

NAME = "get-state"
DOC = """Read an entity's state, substate and attributes from the state store.

Changes nothing. An entity that does not exist is not an error: ``exists``
is false and the other outputs are empty, so a recipe can branch on it
(``if: "{{ not steps.ous.outputs.exists }}"``). In a dry run it reports what
the earlier planned steps of the run would have set.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "id"],
    "properties": {
        "kind": {
            "description": "The kind of entity.",
            "type": "string",
            "pattern": "^[A-Za-z][A-Za-z0-9_.-]*$",
            "examples": ["ous"],
        },
        "id": {
            "description": "The entity's id.",
            "type": "string",
            "minLength": 1,
            "examples": ["{{ inputs.ous }}"],
        },
        "store": {
            "description": "The state store URL (default as for set-state).",
            "type": ["string", "null"],
            "examples": ["sqlite:///srv/wsrun/state.db"],
        },
    },
}

EXAMPLES = [
    """- id: ous
  uses: get-state
  with: {kind: ous, id: "{{ inputs.ous }}"}
- uses: shell
  if: "{{ steps.ous.outputs.state == 'ReadyForReview' }}"
  with: {argv: [echo, "{{ steps.ous.outputs.attributes.exec }}"]}
"""
]

OUTPUTS = {
    "exists": "whether the entity exists",
    "state": "its state (None if it does not exist)",
    "substate": "its substate (None if none)",
    "attributes": "its attributes ({} if it does not exist)",
    "updated": "when it last changed, seconds since the epoch (None if it does not exist)",
    "version": "its version, counting its changes (0 if it does not exist): set-state's expect_version",
    "entity": "the whole entity {kind, id, state, substate, updated, attributes, version}, or None",
}


def entity_outputs(entity: Entity | None) -> dict[str, Any]:
    """The outputs describing ``entity`` (shared with wait-state)."""
    if entity is None:
        return {
            "exists": False,
            "state": None,
            "substate": None,
            "attributes": {},
            "updated": None,
            "version": 0,
            "entity": None,
        }
    return {
        "exists": True,
        "state": entity.state,
        "substate": entity.substate,
        "attributes": entity.attributes,
        "updated": entity.updated,
        "version": entity.version,
        "entity": entity.to_json(),
    }


def read_entity(params: dict[str, Any], ctx: StepContext) -> Entity | None:
    """The entity the parameters name, as the run sees it now."""
    try:
        store = open_state_store(state_url(params.get("store"), ctx.env))
    except StateError as e:
        raise StepError(str(e)) from None
    try:
        return planned_entity(store, ctx.fs, params["kind"], params["id"])
    finally:
        store.close()


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    return Plan(outputs=entity_outputs(read_entity(params, ctx)))


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
