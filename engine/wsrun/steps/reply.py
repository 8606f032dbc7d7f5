"""The ``reply`` step type: answer the request that started this run."""

from __future__ import annotations

from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.publish import SCHEMA as PUBLISH_SCHEMA
from wsrun.steps.publish import open_step_bus

NAME = "reply"
DOC = """Answer the ``call`` whose message started this run (under ``wsrun worker``).

Pass the triggering message as ``message: "{{ message }}"``: the reply goes to
its private reply queue with its correlation id, and the caller's ``call``
step (or ``wsrun bus call``) returns ``body``. A message that was published
rather than called wants no reply, and neither does a run started by hand
(``message`` is then null): the step then does nothing. A dry run reports the
reply without sending it.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["message"],
    "properties": {
        "message": {
            "description": 'The message being answered; write "{{ message }}".',
            "type": ["object", "null"],
            "examples": ["{{ message }}"],
        },
        "body": PUBLISH_SCHEMA["properties"]["body"]
        | {
            "description": "The reply: a mapping of JSON values.",
            "examples": [{"state": "{{ steps.get.outputs.state }}"}],
        },
        "bus": PUBLISH_SCHEMA["properties"]["bus"],
    },
}

EXAMPLES = [
    """- id: answer
  uses: reply
  with:
    message: "{{ message }}"
    body: {ok: true, state: "{{ steps.get.outputs.entity.state }}"}
""",
]

OUTPUTS = {"id": "the reply's message id (null in a dry run, or when no reply was wanted)"}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    message = params.get("message") or {}
    if not isinstance(message, dict):
        raise StepError('message must be the triggering message: write "{{ message }}"')
    reply_to = message.get("reply_to")
    if not reply_to:
        return Plan(outputs={"id": None})
    effect = Effect("publish", str(reply_to), extra={"reply": True})
    return Plan(effects=[effect], outputs={"id": None}, data=params)


def apply(plan: Plan, ctx: StepContext) -> Result:
    from wsrun.stores.bus import BusError

    params: dict[str, Any] | None = plan.data
    if params is None:
        return Result(outputs=plan.outputs)
    message = params["message"]
    bus = open_step_bus(params, ctx)
    try:
        id = bus.send_to_queue(
            message["reply_to"],
            "reply." + str(message.get("selector") or "call"),
            params.get("body") or {},
            correlation_id=message.get("correlation_id"),
        )
    except BusError as e:
        raise StepError(str(e)) from None
    if id is None:
        ctx.log(f"reply to {message['reply_to']} dropped: the caller stopped waiting")
    return Result(effects=list(plan.effects), outputs={"id": id})
