"""The ``ask`` step type: a choice made by a person on a terminal, or given up front."""

from __future__ import annotations

import sys
from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "ask"
DOC = """Ask a person for a value (a QA verdict, which item to work on), or take it as given.

A recipe that needs a human decision takes it as an input (``--flag Pass``)
and passes it as ``value``; the step checks it against ``choices`` and
outputs it. Without a value, and with a terminal on stdin, the step shows
``show`` (a report, a URL), lists the choices and asks until it gets a valid
answer; an answer may be a choice's name or an unambiguous prefix of it, in
any case (``p`` for Pass). Without a value and without a terminal (a worker,
a cron job) the step fails with a message saying which input to give,
instead of hanging.

Asking changes nothing, so it happens while planning: a dry run asks too,
and the answer decides what the later steps plan.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["prompt"],
    "properties": {
        "prompt": {
            "description": "The question, shown before the choices.",
            "type": "string",
            "minLength": 1,
            "examples": ["QA2 flag for {{ inputs.ous }}"],
        },
        "choices": {
            "description": "The allowed answers; any non-empty answer when absent. An empty "
            "list is an error saying there is nothing to choose from.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "examples": [["Pass", "SemiPass", "Fail", "Cancel"]],
        },
        "value": {
            "description": "The answer, given non-interactively (usually an input of the "
            "recipe); empty or null means ask on the terminal.",
            "type": ["string", "null"],
            "examples": ["{{ inputs.flag }}"],
        },
        "show": {
            "description": "Text shown on the terminal before the question (a report, a URL).",
            "type": ["string", "null"],
            "examples": ["Weblog: {{ vars.weblog_url }}"],
        },
        "input_name": {
            "description": "How the operator gives the answer without a terminal, named in the "
            "error when there is none (an option of the recipe).",
            "type": "string",
            "examples": ["--flag"],
        },
        "empty_message": {
            "description": "The error when `choices` is empty (nothing to choose from).",
            "type": "string",
            "examples": ["no OUS is ReadyForReview"],
        },
    },
}

EXAMPLES = [
    """- id: flag
  uses: ask
  with:
    prompt: "QA2 flag for {{ inputs.ous }}"
    choices: [Pass, SemiPass, Fail, Cancel]
    value: "{{ inputs.flag }}"
    input_name: --flag
    show: "{{ vars.report }}"
""",
]

OUTPUTS = {"value": "the answer: one of `choices`, spelled as listed"}


def match(answer: str, choices: list[str] | None) -> str | None:
    """The choice ``answer`` names (exactly, case-insensitively, or by a
    unique prefix), or None."""
    answer = answer.strip()
    if not choices:
        return answer or None
    if answer in choices:
        return answer
    folded = [c for c in choices if c.lower() == answer.lower()]
    if len(folded) == 1:
        return folded[0]
    prefixed = [c for c in choices if answer and c.lower().startswith(answer.lower())]
    return prefixed[0] if len(prefixed) == 1 else None


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    choices = params.get("choices")
    if choices is not None and not choices:
        raise StepError(params.get("empty_message") or "there is nothing to choose from")
    given = params.get("value")
    if given not in (None, ""):
        value = match(str(given), choices)
        if value is None:
            raise StepError(f"{given!r} is not one of: {', '.join(choices or [])}")
        return Plan(outputs={"value": value})
    if not is_terminal():
        how = f" (give it with {params['input_name']})" if params.get("input_name") else ""
        raise StepError(f"{params['prompt']}: no answer given and no terminal to ask on{how}")
    return Plan(outputs={"value": ask_terminal(params["prompt"], choices, params.get("show"))})


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)


def is_terminal() -> bool:
    """Whether a person can answer: stdin is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()


def ask_terminal(prompt: str, choices: list[str] | None, show: str | None) -> str:
    """Show ``show``, then ask until the answer is valid; end of input is an error."""
    out = sys.stderr
    if show:
        print(show, file=out)
    options = f" [{'/'.join(choices)}]" if choices else ""
    while True:
        print(f"{prompt}{options}: ", end="", file=out, flush=True)
        line = sys.stdin.readline()
        if not line:
            raise StepError(f"{prompt}: no answer (end of input)")
        value = match(line, choices)
        if value is not None:
            return value
        print(f"  please answer one of: {', '.join(choices or [])}", file=out)
