"""The ``publish`` step type: send a message on the bus."""

from __future__ import annotations

from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "publish"
DOC = """Send a message on the bus to every queue subscribed to its selector.

Selectors are dotted words (``pipeline.process.EU``); a recipe run by
``wsrun worker`` with ``on: {message: "pipeline.process.*"}`` receives it, its
body becoming the recipe's inputs. Delivery is at least once: the message is
kept until a subscriber handles it, even one that starts later. A dry run
reports the message without sending it. The bus is ``bus`` when given, else
``$WSRUN_BUS_URL``, the setting ``wsrun.bus.url``, or ``bus.db`` under
``$WSRUN_HOME``. To answer a ``call``, use the ``reply`` step.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["selector"],
    "properties": {
        "selector": {
            "description": "Where the message goes: dotted words, no wildcards.",
            "type": "string",
            "pattern": r"^[^.*#]+(\.[^.*#]+)*$",
            "examples": ["pipeline.process.EU", "cached.{{ inputs.exec }}"],
        },
        "body": {
            "description": "The message: a mapping of JSON values (a subscribing recipe's inputs).",
            "type": "object",
            "default": {},
            "examples": [{"progID": "{{ inputs.prog }}", "ousUID": "{{ inputs.ous }}"}],
        },
        "headers": {
            "description": "Extra metadata carried with the message, not part of its body.",
            "type": "object",
            "default": {},
            "examples": [{"source": "launcher"}],
        },
        "bus": {
            "description": "Bus URL (default: $WSRUN_BUS_URL, the setting wsrun.bus.url, "
            "or sqlite:// bus.db under $WSRUN_HOME).",
            "type": "string",
            "minLength": 1,
            "examples": ["sqlite:///var/lib/wsrun/bus.db"],
        },
    },
}

EXAMPLES = [
    """- id: process
  uses: publish
  with:
    selector: pipeline.process.{{ inputs.exec }}
    body: {progID: "{{ inputs.prog }}", ousUID: "{{ inputs.ous }}", recipe: PipelineCalibration}
""",
]

OUTPUTS = {"id": "the message id (null in a dry run: nothing is sent)"}


def open_step_bus(params: dict[str, Any], ctx: StepContext) -> Any:
    """The bus a bus step uses: its ``bus`` parameter, else the run's environment."""
    from wsrun.stores.bus import BusError, bus_url, open_bus

    try:
        return open_bus(bus_url(params.get("bus"), env=ctx.env))
    except BusError as e:
        raise StepError(str(e)) from None


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    effect = Effect("publish", params["selector"])
    return Plan(effects=[effect], outputs={"id": None}, data=params)


def apply(plan: Plan, ctx: StepContext) -> Result:
    from wsrun.stores.bus import BusError

    params: dict[str, Any] = plan.data
    bus = open_step_bus(params, ctx)
    try:
        id = bus.publish(
            params["selector"], params.get("body") or {}, headers=params.get("headers") or None
        )
    except BusError as e:
        raise StepError(str(e), path=params["selector"]) from None
    return Result(effects=list(plan.effects), outputs={"id": id})
