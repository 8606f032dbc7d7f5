"""What a message may put into a run: only the inputs its recipe lets it carry.

A message comes from anyone who can publish on the bus, so its body is
untrusted. The recipe marks the inputs a message may carry with
``from_message: true``; everything else (the worker's ``--set`` values, the
defaults, the settings) is fixed at deployment and always wins. A body that
tries to set anything else, gives a value of the wrong JSON type (``"no"`` for
a bool) or a path outside the roots the input declares (``within:``) is
refused with the reason, and the worker parks the message dead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from wsrun.core import expr
from wsrun.core.recipe import Recipe

#: The JSON types a body must use for each input type, and how to say so.
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "bool": ((bool,), "true or false"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "string": ((str,), "a string"),
    "path": ((str,), "a string"),
    "list": ((list,), "an array"),
}


class InvalidMessage(Exception):
    """The message cannot start a run; ``str()`` is the reason, in one line."""


def accepted(recipe: Recipe) -> list[str]:
    """The inputs a message may carry (``from_message: true``)."""
    return [k for k, spec in recipe.inputs.items() if spec.get("from_message")]


def from_body(
    recipe: Recipe,
    given: Mapping[str, Any],
    body: Mapping[str, Any],
    *,
    workdir: str,
    settings: Mapping[str, Any],
    strict: bool = True,
) -> dict[str, Any]:
    """The run's inputs: ``given`` (fixed by ``--set``) and the body's values
    of the inputs a message may carry. ``strict``: any other key refuses the
    message (a state change's other fields, and those ``--set`` fixed, are
    ignored instead: the change describes an entity, it asks for nothing)."""
    may = accepted(recipe)
    taken: dict[str, Any] = {}
    refused = []
    for key, value in body.items():
        if key in given:
            if strict and value is not None and _typed(recipe, key, value, workdir) != given[key]:
                refused.append(f"{key} (fixed by the worker)")
        elif key in may:
            if value is not None:
                taken[key] = value
        elif strict:
            refused.append(key)
    if refused:
        raise InvalidMessage(
            f"the body may not set {', '.join(refused)}"
            f" (a message may carry {', '.join(k for k in may if k not in given) or 'nothing'})"
        )
    for key, value in taken.items():
        spec = recipe.inputs[key]
        check_json(key, spec, value)
        if spec.get("within"):
            roots = _roots(recipe, spec["within"], given, settings, workdir)
            values = value if isinstance(value, list) else [value]
            for v in values:
                confine(key, v, roots, workdir)
    return {**given, **taken}


def check_json(name: str, spec: Mapping[str, Any], value: Any) -> None:
    """``value`` has the JSON type the input's type needs: message bodies are
    JSON, so ``"no"`` is a string, never the boolean false."""
    kind = spec.get("type", "string")
    if kind == "choice":
        if not any(value == c and type(value) is type(c) for c in spec.get("choices", [])):
            choices = ", ".join(map(repr, spec.get("choices", [])))
            raise InvalidMessage(f"input '{name}': {value!r} is not one of {choices}")
        return
    types, hint = _JSON_TYPES.get(kind, ((str,), "a string"))
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise InvalidMessage(f"input '{name}': {value!r} is not {hint} (message bodies are JSON)")
    if kind == "list":
        item = {"type": spec.get("items", "string")}
        for v in value:
            check_json(name, item, v)


def confine(name: str, value: str, roots: list[str], workdir: str) -> str:
    """``value`` (a path from a message) if it lies inside one of ``roots``
    once symbolic links and ``..`` are resolved."""
    real = os.path.realpath(os.path.join(workdir, value))
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return value
    raise InvalidMessage(f"input '{name}': {value!r} is outside {', '.join(roots)}")


def _typed(recipe: Recipe, key: str, value: Any, workdir: str) -> Any:
    from wsrun.core.scope import RunError, convert_input

    spec = recipe.inputs[key]
    try:
        return convert_input(key, spec.get("type", "string"), value, spec, workdir)
    except RunError:
        return value


def _roots(
    recipe: Recipe,
    within: Any,
    given: Mapping[str, Any],
    settings: Mapping[str, Any],
    workdir: str,
) -> list[str]:
    """The roots of ``within:`` (paths or expressions over the inputs fixed at
    deployment and the settings), absolute; an empty one confines to nothing."""
    fixed = {k: spec.get("default") for k, spec in recipe.inputs.items()}
    fixed.update(given)
    roots = []
    for root in [within] if isinstance(within, str) else within:
        try:
            value = expr.render(root, {"inputs": fixed, "settings": dict(settings)})
        except expr.ExpressionError as e:
            raise InvalidMessage(f"within: {e.message}") from None
        if value:
            roots.append(os.path.normpath(os.path.join(workdir, str(value))))
    return roots
