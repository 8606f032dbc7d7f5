"""A run's scope: what its expressions are evaluated in, and where that comes from.

The names (``inputs``, ``settings``, ``steps``, ``run``, ``env``, ``message``, ``vars``),
the given inputs checked against the recipe's declarations, the settings it declares
looked up, and the secrets among them told to the run's masker (wsrun.core.masking) so
that nothing printed or journaled shows them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from wsrun.core import expr
from wsrun.core.masking import Masker
from wsrun.core.recipe import Recipe
from wsrun.core.settings import MASK, Settings, display, is_secret_name

#: Environment variables named like credentials (AWS_SECRET_ACCESS_KEY, PGPASSWORD)
#: are masked when their value is at least this long (not flags such as "true").
ENV_SECRET_LENGTH = 8


class RunError(Exception):
    """A run cannot start: bad inputs, missing settings."""


def new_scope(
    recipe: Recipe,
    inputs: dict[str, Any],
    setting_values: dict[str, Any],
    *,
    run_id: str,
    workdir: str,
    dry_run: bool,
    env: dict[str, str],
) -> dict[str, Any]:
    """The names a run's expressions see; ``steps`` fills as steps finish."""
    scope: dict[str, Any] = {
        "inputs": inputs,
        "settings": setting_values,
        "steps": {},
        "run": {
            "id": run_id,
            "started": time.time(),
            "workdir": workdir,
            "dry_run": dry_run,
            # where files that ship beside the recipe are (lifecycles, templates)
            "recipe_dir": os.path.dirname(os.path.abspath(recipe.path)),
        },
        "env": env,
        # the message that started the run under `wsrun worker` (set there)
        "message": None,
    }
    scope["vars"] = expr.LazyVars(recipe.vars, scope)
    return scope


def add_secrets(
    masker: Masker,
    recipe: Recipe,
    setting_values: Mapping[str, Any],
    inputs: Mapping[str, Any],
    env: Mapping[str, str] | None,
) -> None:
    """Tell the masker a recipe's secrets: secret settings and inputs, URL passwords
    in settings and, given ``env`` (the top recipe's), the environment's credentials."""
    for alias, spec in recipe.settings.items():
        value = setting_values.get(alias)
        if spec.get("secret") or is_secret_name(spec["name"]):
            masker.add(value)
        masker.add_url_passwords(value)
    for name, spec in recipe.inputs.items():
        if spec.get("secret"):
            values = inputs.get(name)
            for value in values if isinstance(values, list) else [values]:
                masker.add(value)
    for name, value in (env or {}).items():
        if is_secret_name(name) and len(value) >= ENV_SECRET_LENGTH:
            masker.add(value)


def masked_inputs(recipe: Recipe, inputs: Mapping[str, Any], masker: Masker) -> dict[str, Any]:
    """The inputs as the journal keeps them: a secret one, or one that holds a
    secret, as MASK (so ``wsrun resume`` refuses the run rather than use the mask).
    Paths keep their exact bytes, so a resumed run writes where the first did."""
    return {
        k: MASK if recipe.inputs.get(k, {}).get("secret") or holds_secret(masker, v) else v
        for k, v in inputs.items()
    }


def holds_secret(masker: Masker, value: Any) -> bool:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return masker.text(text) != text


def resolve_settings(recipe: Recipe, settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of the settings a recipe declares, and their masked forms for
    printing; every missing required setting is reported at once."""
    values: dict[str, Any] = {}
    shown: dict[str, str] = {}
    missing = []
    for alias, spec in recipe.settings.items():
        found = settings.get(spec["name"])
        if found is not None:
            values[alias] = found.value
        elif "default" in spec:
            values[alias] = spec["default"]
        elif spec.get("required", True):
            missing.append(
                f"{recipe.where('settings', alias)}: missing setting '{spec['name']}' ({settings.where_searched(spec['name'])})"
            )
            continue
        else:
            values[alias] = None
        shown[spec["name"]] = display(spec["name"], values[alias], spec.get("secret", False))
    if missing:
        raise RunError("\n".join(missing))
    return values, shown


def coerce_inputs(recipe: Recipe, given: Mapping[str, Any], workdir: str) -> dict[str, Any]:
    """Check given input values against the recipe's declared inputs and fill
    defaults; used for sub-recipes, resumes and the Python API."""
    declared = recipe.inputs
    unknown = [k for k in given if k not in declared]
    if unknown:
        raise RunError(
            f"{recipe.path}: unknown input(s) {', '.join(sorted(unknown))} (inputs: {', '.join(declared) or 'none'})"
        )
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        kind = spec.get("type", "string")
        if name in given and given[name] is not None:
            out[name] = convert_input(name, kind, given[name], spec, workdir)
        elif "default" in spec:
            out[name] = spec["default"]
        elif spec.get("required") or (spec.get("positional") and kind != "list"):
            raise RunError(f"{recipe.path}: input '{name}' is required")
        else:
            out[name] = [] if kind == "list" else (False if kind == "bool" else None)
    return out


def convert_input(name: str, kind: str, value: Any, spec: Mapping[str, Any], workdir: str) -> Any:
    try:
        if kind == "path":
            return os.path.normpath(os.path.join(workdir, os.fspath(value)))
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError
            return bool(value)
        if kind == "choice":
            if value not in spec.get("choices", []):
                shown = MASK if spec.get("secret") else repr(value)
                raise RunError(
                    f"input '{name}': {shown} is not one of {', '.join(map(str, spec['choices']))}"
                )
            return value
        if kind == "list":
            items = value if isinstance(value, list) else [value]
            item_kind = spec.get("items", "string")
            return [convert_input(name, item_kind, v, {}, workdir) for v in items]
        return str(value)
    except (TypeError, ValueError):
        shown = MASK if spec.get("secret") else repr(value)
        raise RunError(f"input '{name}': {shown} is not a valid {kind}") from None
