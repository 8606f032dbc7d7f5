"""Before a run starts: the backends its steps will open, checked for their extras.

A ``postgresql://`` state store without psycopg would otherwise fail at the step
that opens it, after earlier steps had already changed things. The extras table is
``wsrun.core.extras``; this module knows the stores' default URLs, so it sits with
them (the command line and the worker both call it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsrun.core.extras import require_url

#: Built-in step type -> (its parameter naming a backend URL, what the backend is).
STEP_BACKENDS: dict[str, tuple[str, str]] = {
    **{
        name: ("store", "state store")
        for name in ("set-state", "get-state", "wait-state", "list-state")
    },
    **{name: ("bus", "bus") for name in ("publish", "call", "reply")},
    **{name: ("archive", "archive") for name in ("ingest", "archive-check")},
}


def preflight(recipe: Any, env: Mapping[str, str] | None = None) -> None:
    """Raise MissingExtra before a run starts when a backend its steps (or the
    steps of the recipes it calls) will open needs an extra that is missing:
    a ``postgresql://`` state store without psycopg would otherwise fail at the
    step that opens it, after earlier steps had already changed things. A URL
    given as an expression is known only at run time; its backend's opener
    checks it then. (A step type's own extra is a validation problem.)"""
    from wsrun.core.loader import YamlError
    from wsrun.core.recipe import RecipeNotFound, is_recipe_ref, load_recipe, resolve
    from wsrun.stores.archive.store import archive_url, files_url
    from wsrun.stores.bus import bus_url
    from wsrun.stores.state import state_url

    default_urls = {"state store": state_url, "bus": bus_url, "archive": archive_url}

    checked: set[tuple[str, str]] = set()
    seen: set[str] = set()

    def walk(r: Any) -> None:
        if r.path in seen:
            return
        seen.add(r.path)
        for section in ("steps", "on_failure", "finally"):
            steps = r.data.get(section)
            for step in steps if isinstance(steps, list) else []:
                uses = step.get("uses") if isinstance(step, dict) else None
                if not isinstance(uses, str):
                    continue
                if is_recipe_ref(uses):
                    try:
                        walk(load_recipe(resolve(uses, r.dir)))
                    except (RecipeNotFound, OSError, YamlError):
                        pass  # validation reports it
                    continue
                if uses not in STEP_BACKENDS:
                    continue
                param, role = STEP_BACKENDS[uses]
                params = step.get("with")
                given = params.get(param) if isinstance(params, dict) else None
                if given is not None and (not isinstance(given, str) or "{{" in given):
                    continue
                if given is None:
                    given = default_urls[role](None, env)
                if (given, role) not in checked:
                    checked.add((given, role))
                    require_url(given, role)
                    if role == "archive":  # and where its files are (files=, env, setting)
                        files = files_url(given, env)
                        if files:
                            require_url(files, "archive file store")

    walk(recipe)
