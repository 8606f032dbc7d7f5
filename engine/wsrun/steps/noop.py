"""The ``noop`` step type: does nothing, reports its parameters as outputs."""

from __future__ import annotations

from typing import Any

from wsrun.core.step import Plan, Result, StepContext

NAME = "noop"
DOC = """Do nothing and pass the parameters through as outputs.

Useful to compute a value once (``outputs`` of a noop step are its ``with:``
values) and to measure the engine's own overhead.
"""
SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": True}
EXAMPLES = [
    """- id: names
  uses: noop
  with: {greeting: "hello {{ inputs.name }}"}
"""
]
OUTPUTS = {"<any>": "each parameter, as given"}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    return Plan(outputs=dict(params))


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
