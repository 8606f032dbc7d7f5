"""The ``set-state`` step type: move an entity along its lifecycle in the state store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.step import DuplicateWork, Plan, Result, StepContext, StepError
from wsrun.stores.state import UNSET, Lifecycle, StateError, open_state_store, state_url
from wsrun.stores.state.base import StateConflict, resolve_change
from wsrun.stores.state.planning import (
    entity_path,
    planned_entity,
    planned_lifecycle,
    read_lifecycle,
)

NAME = "set-state"
DOC = """Set an entity's state, substate or attributes in the state store, in one transaction.

The entity (an OUS, a request) is named by ``kind`` and ``id``. When the kind
has a lifecycle (docs/state.md; ``lifecycle:`` registers one from a YAML
file) only the moves it lists are allowed: an illegal one fails the step,
naming the entity, both states and the states allowed from the current one,
and changes nothing. ``expect`` guards against racing another process: the
step fails unless the entity is in that state. A new entity needs
``create: true`` and starts in the lifecycle's initial state. Every change is
kept in the entity's history (``wsrun state history``) and waits in the
store's outbox until ``wsrun worker`` publishes it on the bus as
``state.<kind>.<state>``; this step publishes nothing itself.

Starting work is a compare-and-set, so exactly one of several processes racing
for an entity wins and the others fail with a one-line refusal:
``expect_version`` (the ``version`` a ``get-state`` step read) refuses the
change if anyone changed the entity since; ``claim`` (usually ``{{ message.id
}}``) records the claimant in the attribute ``claim`` and fails the step as a
*duplicate* when the entity is already in ``state`` under another claimant
(``wsrun worker`` then acks the message instead of retrying it), while the same
claimant, a message redelivered after its first run died, takes it over.

Setting what the entity already holds changes nothing (status ok), so a
re-run is harmless. A dry run checks the move against the state the earlier
steps of the run would have left and writes nothing to the store.
"""

_NAME = {"type": "string", "minLength": 1}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "id"],
    "properties": {
        "kind": {
            "description": "The kind of entity (its lifecycle's `kind`).",
            "type": "string",
            "pattern": "^[A-Za-z][A-Za-z0-9_.-]*$",
            "examples": ["ous"],
        },
        "id": {
            "description": "The entity's id.",
            **_NAME,
            "examples": ["{{ inputs.ous }}", "uid://X1/X1/Xb0"],
        },
        "state": {
            "description": "The state to move to. Leave it out to change only the substate "
            "or attributes.",
            **_NAME,
            "examples": ["Processing"],
        },
        "substate": {
            "description": "The substate to set (null clears it). Left out: kept if the new "
            "state allows it, cleared otherwise.",
            "type": ["string", "null"],
            "minLength": 1,
            "examples": ["IngestionTriggered"],
        },
        "attributes": {
            "description": "Attributes to set (merged into the entity's; other attributes "
            "are kept). Values are any JSON.",
            "type": "object",
            "examples": [{"exec": "EU", "recipe": "PipelineCalibration"}],
        },
        "expect": {
            "description": "Fail unless the entity is currently in this state (or one of "
            "these states).",
            "oneOf": [_NAME, {"type": "array", "minItems": 1, "items": _NAME}],
            "examples": ["ReadyForReview", ["Verified", "DeliveryInProgress"]],
        },
        "expect_version": {
            "description": "Fail unless the entity is at this version (0: does not exist "
            "yet): a compare-and-set against what a get-state step read. The change is "
            "always written, so a racing claimant with the same version loses.",
            "type": "integer",
            "minimum": 0,
            "examples": ["{{ steps.ous.outputs.version }}"],
        },
        "claim": {
            "description": "Take the entity for this claimant (recorded as attribute "
            "`claim`): already in `state` under another claimant fails as a duplicate; "
            "under the same one (a redelivered message) it is taken over, `expect` aside.",
            "type": "string",
            "minLength": 1,
            "examples": ["{{ message.id }}"],
        },
        "create": {
            "description": "Create the entity if it does not exist (in the lifecycle's "
            "initial state); otherwise an unknown entity is an error.",
            "type": "boolean",
            "default": False,
        },
        "lifecycle": {
            "description": "A lifecycle YAML file for `kind` to register in the store first "
            "(replacing the registered one if it differs).",
            **_NAME,
            "examples": ["ous-lifecycle.yaml"],
        },
        "store": {
            "description": "The state store URL. Default: $WSRUN_STATE_URL, else the "
            "wsrun.state.url setting, else sqlite:///$WSRUN_HOME/state.db.",
            "type": ["string", "null"],
            "examples": ["sqlite:///srv/wsrun/state.db"],
        },
    },
}

EXAMPLES = [
    """- id: launch
  uses: set-state
  with:
    kind: ous
    id: "{{ inputs.ous }}"
    state: ReadyForProcessing
    create: true
    lifecycle: ous-lifecycle.yaml
    attributes: {progID: "{{ inputs.prog }}", exec: "{{ inputs.exec }}"}
""",
    """- id: pass
  uses: set-state
  with: {kind: ous, id: "{{ inputs.ous }}", state: Verified, expect: Reviewing}
""",
    """- id: progress
  uses: set-state
  with: {kind: ous, id: "{{ inputs.ous }}", substate: IngestingProducts}
""",
]

OUTPUTS = {
    "kind": "the entity's kind",
    "id": "the entity's id",
    "state": "its state after the step",
    "substate": "its substate after the step (None if none)",
    "from": "its state before the step (None if the step created it)",
    "attributes": "all its attributes after the step",
    "changed": "whether the step changed anything",
    "store": "the state store URL (a password in it masked)",
}


@dataclass
class _Job:
    url: str
    lifecycle: Lifecycle | None
    create: bool
    #: The version the change must find (a compare-and-set), or None.
    version: int | None = None
    claim: str | None = None


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    kind, id = params["kind"], params["id"]
    url = state_url(params.get("store"), ctx.env)
    attributes = dict(params.get("attributes") or {})
    effects: list[Effect] = []
    try:
        store = open_state_store(url)
    except StateError as e:
        raise StepError(str(e)) from None
    shown = store.url  # what effects and outputs name: the URL, its password masked
    try:
        lifecycle = planned_lifecycle(store, ctx.fs, kind)
        new_lifecycle = None
        if params.get("lifecycle"):
            path = ctx.path(params["lifecycle"])
            new_lifecycle = read_lifecycle(path, ctx.fs)
            if new_lifecycle.kind != kind:
                raise StepError(f"is the lifecycle of '{new_lifecycle.kind}', not '{kind}'", path)
            if lifecycle is None or lifecycle.to_json() != new_lifecycle.to_json():
                effects.append(Effect("record", path, target=shown, extra={"lifecycle": kind}))
            lifecycle = new_lifecycle
        current = planned_entity(store, ctx.fs, kind, id)
    except StateError as e:
        raise StepError(str(e)) from None
    finally:
        store.close()
    expect, claim = params.get("expect"), params.get("claim")
    if claim is not None:
        attributes["claim"] = claim
        if current is not None and current.state == params.get("state"):
            holder = current.attributes.get("claim")
            if holder != claim:
                raise DuplicateWork(
                    f"{kind} {id} is already {current.state}, claimed by {holder or 'another run'}",
                    path=id,
                )
            expect = None  # ours: the message redelivered after its first run died
    try:
        state, substate = resolve_change(
            lifecycle,
            current,
            kind,
            id,
            state=params.get("state"),
            substate=params["substate"] if "substate" in params else UNSET,
            expect_state=expect,
            expect_version=params.get("expect_version"),
            create=bool(params.get("create")),
        )
    except StateError as e:
        raise StepError(str(e)) from None  # the message names the entity
    old_attributes = current.attributes if current else {}
    unchanged = (
        params.get("expect_version") is None
        and current is not None
        and state == current.state
        and substate == current.substate
        and all(k in old_attributes and old_attributes[k] == v for k, v in attributes.items())
    )
    if not unchanged:
        extra: dict[str, Any] = {
            "from": current.state if current else None,
            "to": state,
            "substate": substate,
        }
        if attributes:
            extra["attributes"] = attributes
        effects.append(Effect("set_state", entity_path(kind, id), target=shown, extra=extra))
    outputs = {
        "kind": kind,
        "id": id,
        "state": state,
        "substate": substate,
        "from": current.state if current else None,
        "attributes": {**old_attributes, **attributes},
        "changed": not unchanged,
        "store": shown,
    }
    version = current.version if current else 0
    cas = claim is not None or params.get("expect_version") is not None
    job = _Job(url, new_lifecycle, current is None, version if cas else None, claim)
    return Plan(effects=effects, outputs=outputs, data=job)


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: _Job = plan.data
    try:
        store = open_state_store(job.url)
    except StateError as e:
        raise StepError(str(e)) from None
    try:
        for effect in plan.effects:
            if effect.op == "record":
                assert job.lifecycle is not None
                store.register_lifecycle(job.lifecycle)
            elif effect.op == "set_state":
                # Exactly the planned change: from the planned state (or absent).
                store.transition(
                    plan.outputs["kind"],
                    plan.outputs["id"],
                    state=effect.extra["to"],
                    substate=effect.extra["substate"],
                    attributes=effect.extra.get("attributes"),
                    expect_state=None if job.create else effect.extra["from"],
                    expect_version=0 if job.create else job.version,
                    create=job.create,
                    actor=ctx.run_id or f"step {ctx.step_id}",
                )
    except StateConflict as e:
        if job.claim is not None:
            raise DuplicateWork(f"another claimant took it first: {e}") from None
        raise StepError(str(e)) from None
    except StateError as e:
        raise StepError(str(e)) from None
    finally:
        store.close()
    return Result(effects=list(plan.effects), outputs=plan.outputs)
