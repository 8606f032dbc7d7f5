"""Which optional extra each step type, backend and command needs, in one table.

``pip install wsrun`` is the core: enough for copy, tar, checksum, rsync,
deliver, conveyor, ingest and the embedded (SQLite) state store, bus, archive
and journal. The rest comes with extras (``pip install 'wsrun[s3]'``), so that a
user who wants to copy and tar does not install botocore, psycopg, Pillow, ...

Nothing in the core imports an extra's package when it is imported; a step or
backend imports it when it is used. Before that, the recipe's validation (and
so every run, dry run and ``wsrun validate``) and every backend's opener ask
this module, and a missing extra is one line that says what to install::

    s3-upload needs wsrun[s3]: pip install 'wsrun[s3]'
    postgresql:// state store needs wsrun[postgres]: pip install 'wsrun[postgres]'

The names here must match ``[project.optional-dependencies]`` in
pyproject.toml (a test compares them).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

#: Extra -> the top-level modules it installs that wsrun imports (present when
#: the extra is installed).
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("s3fs",),
    "postgres": ("psycopg", "psycopg_pool"),
    "amqp": ("pika",),
    "web": ("starlette", "uvicorn", "multipart"),
    "images": ("PIL", "numpy", "tifffile", "imagecodecs"),
    "http": ("httpx",),
}

#: Built-in step type -> the extra it needs (step types not listed need only the core).
STEP_EXTRAS: dict[str, str] = {
    "s3-upload": "s3",
    "s3-download": "s3",
    "s3-list": "s3",
    "s3-remove": "s3",
    "image-derivative": "images",
    "http": "http",
    "archivesspace": "http",
}

#: Backend URL scheme -> the extra its backend needs (``sqlite`` and plain paths: the core).
SCHEME_EXTRAS: dict[str, str] = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "amqp": "amqp",
    "amqps": "amqp",
    "s3": "s3",
    "s3a": "s3",
}

#: What each extra adds, for ``wsrun doctor``.
PURPOSES: dict[str, str] = {
    "s3": "s3-upload, s3-download, s3-list, s3-remove; s3:// archive files",
    "postgres": "postgresql:// state store, archive, journal; wsrun db",
    "amqp": "amqp:// bus (RabbitMQ)",
    "web": "wsrun serve",
    "images": "image-derivative",
    "http": "http, archivesspace",
}


class MissingExtra(Exception):
    """Something the run needs comes with an extra that is not installed; the
    message is the one line to show."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(message(what, extra))
        self.what = what
        self.extra = extra


def message(what: str, extra: str) -> str:
    """The one line saying that ``what`` needs ``extra`` and how to install it."""
    return f"{what} needs wsrun[{extra}]: pip install 'wsrun[{extra}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def installed(extra: str) -> bool:
    """Whether every module ``extra`` brings can be imported (without importing it).
    Asked once per process: validation asks for every step that needs an extra."""
    return all(_importable(m) for m in EXTRAS[extra])


def missing_for_step(uses: str) -> str | None:
    """The extra step type ``uses`` needs and lacks, or None."""
    extra = STEP_EXTRAS.get(uses)
    return extra if extra is not None and not installed(extra) else None


def require(what: str, extra: str) -> None:
    """Raise MissingExtra unless ``extra`` is installed."""
    if not installed(extra):
        raise MissingExtra(what, extra)


def require_url(url: str, role: str) -> None:
    """Raise MissingExtra unless the backend for ``url`` is installed; ``role``
    names what the URL is for ("state store", "bus", "archive", "journal")."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    extra = SCHEME_EXTRAS.get(scheme)
    if extra is not None:
        require(f"{scheme}:// {role}", extra)


def status() -> dict[str, bool]:
    """Every extra and whether it is installed (``wsrun doctor``)."""
    return {extra: installed(extra) for extra in EXTRAS}


#: Built-in step type -> (its parameter naming a backend URL, what the backend
#: is, the function giving the default URL as "module:function").
STEP_BACKENDS: dict[str, tuple[str, str, str]] = {
    **{
        name: ("store", "state store", "wsrun.state:state_url")
        for name in ("set-state", "get-state", "wait-state", "list-state")
    },
    **{name: ("bus", "bus", "wsrun.bus:bus_url") for name in ("publish", "call", "reply")},
    **{
        name: ("archive", "archive", "wsrun.archive_store:archive_url")
        for name in ("ingest", "archive-check")
    },
}


def preflight(recipe: Any, env: Mapping[str, str] | None = None) -> None:
    """Raise MissingExtra before a run starts when a backend its steps (or the
    steps of the recipes it calls) will open needs an extra that is missing:
    a ``postgresql://`` state store without psycopg would otherwise fail at the
    step that opens it, after earlier steps had already changed things. A URL
    given as an expression is known only at run time; its backend's opener
    checks it then. (A step type's own extra is a validation problem.)"""
    from importlib import import_module

    from wsrun.loader import YamlError
    from wsrun.recipe import RecipeNotFound, is_recipe_ref, load_recipe, resolve

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
                param, role, default = STEP_BACKENDS[uses]
                params = step.get("with")
                given = params.get(param) if isinstance(params, dict) else None
                if given is not None and (not isinstance(given, str) or "{{" in given):
                    continue
                if given is None:
                    module, function = default.split(":")
                    given = getattr(import_module(module), function)(None, env)
                if (given, role) not in checked:
                    checked.add((given, role))
                    require_url(given, role)
                    if role == "archive":  # and where its files are (files=, env, setting)
                        from wsrun.archive_store import files_url

                        files = files_url(given, env)
                        if files:
                            require_url(files, "archive file store")

    walk(recipe)
