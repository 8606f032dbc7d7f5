"""The ``call`` step type: send a request on the bus and wait for its reply."""

from __future__ import annotations

from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.publish import SCHEMA as PUBLISH_SCHEMA
from wsrun.steps.publish import open_step_bus

NAME = "call"
DOC = """Send a request on the bus and wait for the reply (request/reply, like an RPC).

The request goes to the selector's subscribers like a ``publish``, with a
private reply queue; the recipe that handles it answers with the ``reply``
step, and the reply's body becomes this step's ``reply`` output. No reply
within ``timeout`` fails the step. A dry run reports the request without
sending it, so the reply is not known then: ``reply`` is null, as a ``shell``
step's output is before its program runs.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["selector"],
    "properties": {
        "selector": PUBLISH_SCHEMA["properties"]["selector"]
        | {"examples": ["xtss", "xtss.{{ inputs.exec }}"]},
        "body": PUBLISH_SCHEMA["properties"]["body"]
        | {
            "description": "The request: a mapping of JSON values.",
            "examples": [{"operation": "get-state", "ousUID": "{{ inputs.ous }}"}],
        },
        "timeout": {
            "description": "Seconds to wait for the reply before the step fails.",
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 30,
            "examples": [5, 0.5],
        },
        "bus": PUBLISH_SCHEMA["properties"]["bus"],
    },
}

EXAMPLES = [
    """- id: state
  uses: call
  with:
    selector: xtss
    body: {operation: get-state, ousUID: "{{ inputs.ous }}"}
    timeout: 10
""",
]

OUTPUTS = {"reply": "the reply's body (null in a dry run: nothing is sent)"}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    effect = Effect("publish", params["selector"], extra={"call": True})
    return Plan(effects=[effect], outputs={"reply": None}, data=params)


def apply(plan: Plan, ctx: StepContext) -> Result:
    from wsrun.stores.bus import BusError, BusTimeout

    params: dict[str, Any] = plan.data
    bus = open_step_bus(params, ctx)
    timeout = float(params.get("timeout", 30))
    remaining = ctx.remaining()
    if remaining is not None:
        timeout = min(timeout, remaining)
    try:
        reply = bus.call(params["selector"], params.get("body") or {}, timeout=timeout)
    except BusTimeout as e:  # nobody answered yet: worth asking again later
        raise StepError(str(e), path=params["selector"], transient=True) from None
    except BusError as e:
        raise StepError(str(e), path=params["selector"]) from None
    return Result(effects=list(plan.effects), outputs={"reply": reply})
