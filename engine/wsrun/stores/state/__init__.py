"""The state store: entities (an OUS, a request) with a state, a substate,
free attributes and their history, moved only along their kind's lifecycle.

Stores are chosen by URL, like fsspec file systems: ``BACKENDS`` maps a URL
scheme to a function that opens a store. The embedded default is one SQLite
file under ``$WSRUN_HOME``; ``postgresql://`` URLs open the store shared by
many hosts (``wsrun.stores.state.postgres``). See docs/state.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from wsrun.stores.state.base import (
    UNSET,
    Change,
    Entity,
    IllegalTransition,
    StateConflict,
    StateError,
    StateStore,
    UnknownEntity,
)
from wsrun.stores.state.lifecycle import Lifecycle, LifecycleError, load_lifecycle

__all__ = [
    "BACKENDS",
    "UNSET",
    "Change",
    "Entity",
    "IllegalTransition",
    "Lifecycle",
    "LifecycleError",
    "StateConflict",
    "StateError",
    "StateStore",
    "UnknownEntity",
    "load_lifecycle",
    "open_state_store",
    "state_url",
]

ENV = "WSRUN_STATE_URL"
SETTING = "wsrun.state.url"


def _open_sqlite(url: str) -> StateStore:
    from wsrun.stores.state.sqlite import SqliteStateStore

    return SqliteStateStore(url)


def _open_postgres(url: str) -> StateStore:
    from wsrun.stores.state.postgres import PostgresStateStore

    return PostgresStateStore(url)


#: URL scheme -> a function opening a store at that URL.
BACKENDS: dict[str, Callable[[str], StateStore]] = {
    "sqlite": _open_sqlite,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}


def state_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The store to use: ``explicit``, else $WSRUN_STATE_URL, else the
    ``wsrun.state.url`` setting, else ``sqlite:///<$WSRUN_HOME>/state.db``."""
    from wsrun.core.journal import default_home
    from wsrun.core.settings import configured_url

    found = configured_url(explicit, ENV, SETTING, env)
    return found or "sqlite://" + os.path.join(default_home(), "state.db")


def open_state_store(url: str | None = None) -> StateStore:
    """Open the store at ``url`` (default: ``state_url()``). A URL without a
    scheme is the path of a SQLite file."""
    url = state_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    factory = BACKENDS.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise StateError(f"no state store backend for '{scheme}://' (known: {known})")
    from wsrun.core import extras

    try:
        extras.require_url(url, "state store")
    except extras.MissingExtra as e:
        raise StateError(str(e)) from None
    return factory(url)
