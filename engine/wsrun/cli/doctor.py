"""``wsrun doctor``: which backends this host uses and whether each answers.

Scale-out installations point the state store, the bus, the archive and the
run journal at shared services by URL (``WSRUN_STATE_URL``, ``WSRUN_BUS_URL``,
``WSRUN_ARCHIVE_URL``, ``WSRUN_JOURNAL_URL`` or their settings). A typo in one
of them, a service down or a database not yet upgraded otherwise shows up as
a failure in the middle of a run; the doctor checks all four up front.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import typer

#: Seconds a network check waits before calling a service unreachable.
TIMEOUT = 3.0
#: Backend -> what its URL is for, in a missing extra's line.
ROLES = {"state": "state store", "bus": "bus", "archive": "archive", "journal": "journal"}


@dataclass
class Check:
    """One backend: its URL (password masked) and what the check found."""

    backend: str
    url: str
    ok: bool
    detail: str


def _url_function(module: str, name: str) -> Callable[[], str] | None:
    """``module.name`` if that backend package is installed, else None."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def configured_backends() -> list[tuple[str, str | None]]:
    """(backend, URL) of the state store, bus, archive and journal this host
    would use; the URL is None when that backend is not installed."""
    found: list[tuple[str, str | None]] = []
    for backend, module, name in (
        ("state", "wsrun.stores.state", "state_url"),
        ("bus", "wsrun.stores.bus", "bus_url"),
        ("archive", "wsrun.stores.archive.store", "archive_url"),
        ("journal", "wsrun.core.journal", "journal_url"),
    ):
        function = _url_function(module, name)
        found.append((backend, function() if function else None))
    return found


def check(backend: str, url: str | None) -> Check:
    """Whether ``url`` answers (and, for PostgreSQL, has an up-to-date schema)."""
    from wsrun.core.db import mask

    if url is None:
        return Check(backend, "-", True, "not installed")
    from wsrun.core import extras

    shown = mask(url)
    try:
        extras.require_url(url, ROLES[backend])
        detail = _probe(backend, url)
    except Exception as e:  # any failure is the finding
        text = (str(e).strip() or type(e).__name__).splitlines()[0]
        return Check(backend, shown, False, text)
    return Check(backend, shown, True, detail)


def _probe(backend: str, url: str) -> str:
    from wsrun.core.db import is_postgres, mask, split_url
    from wsrun.core.migrate import status

    scheme = urlsplit(url).scheme if "://" in url else ""
    if is_postgres(url):
        (found,) = status(url, [backend] if backend != "bus" else None)[:1]
        problem = found.problem()
        if problem:
            raise RuntimeError(problem)
        if found.pending:
            raise RuntimeError(
                f"{found.store} schema version {found.current} of {found.latest}:"
                f" run `wsrun db upgrade --url {mask(split_url(url)[0])}`"
            )
        detail = f"PostgreSQL, {found.store} schema version {found.current}"
        if backend == "archive":
            detail += f"; files {_probe_files(url, required=True)}"
        return detail
    if scheme == "amqp" or scheme == "amqps":
        parts = urlsplit(url)
        port = parts.port or (5671 if scheme == "amqps" else 5672)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=TIMEOUT):
            pass
        return _amqp_login(url)
    if scheme in ("", "sqlite", "file"):
        path = urlsplit(url).path if "://" in url else url
        detail = _probe_local(path, directory=backend == "archive")
        database = os.path.join(path, "archive.db") if backend == "archive" else path
        if os.path.isfile(database):
            detail += _sqlite_schema(backend, database)
        if backend == "archive" and "files=" in url:
            detail += f"; files {_probe_files(url, required=False)}"
        return detail
    raise RuntimeError(f"unsupported URL scheme '{scheme}'")


def _sqlite_schema(backend: str, path: str) -> str:
    """The schema version of an embedded store's file. Pending migrations are fine
    (the store applies them when it next opens the file); a file a newer wsrun
    migrated, or whose applied migrations were edited, is the finding."""
    from wsrun.core.migrate import status

    (found,) = status(path, [backend])
    problem = found.problem()
    if problem:
        raise RuntimeError(problem)
    if found.pending:
        return (
            f", {backend} schema version {found.current} of {found.latest} (upgraded on next use)"
        )
    return f", {backend} schema version {found.current}"


def _amqp_login(url: str) -> str:
    """Log in to the broker with the URL's user, password and vhost: an open
    port says nothing about a wrong password or a missing vhost."""
    from urllib.parse import parse_qsl, urlencode, urlunsplit

    import pika
    import pika.exceptions

    from wsrun.stores.bus.amqp import OPTIONS

    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in OPTIONS])
    params = pika.URLParameters(urlunsplit(parts._replace(query=query)))
    params.socket_timeout = params.blocked_connection_timeout = TIMEOUT
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.ProbableAuthenticationError:
        raise RuntimeError(f"login refused for user '{params.credentials.username}'") from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise RuntimeError(
            f"user '{params.credentials.username}' may not use vhost '{params.virtual_host}'"
        ) from None
    except pika.exceptions.AMQPError as e:
        raise RuntimeError(f"cannot log in: {type(e).__name__}: {e}") from None
    return f"AMQP broker on {parts.hostname or 'localhost'}:{parts.port or 5672}, logged in as {params.credentials.username} (vhost {params.virtual_host})"


def _probe_local(path: str, directory: bool) -> str:
    """Embedded backends: the file (or archive directory) exists or can be created."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if directory and not os.path.isdir(path):
            raise RuntimeError(f"{path} is not a directory")
        if not os.access(path if directory else os.path.dirname(path), os.W_OK):
            raise RuntimeError(f"{path} is not writable")
        return "embedded (SQLite), present"
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent or "/", os.W_OK):
        raise RuntimeError(f"cannot create {path}: {parent} is not writable")
    return "embedded (SQLite), created on first use"


def _probe_files(archive: str, required: bool) -> str:
    """The archive's file store (``files=``, $WSRUN_ARCHIVE_FILES or the setting):
    its root answers a listing."""
    from wsrun.stores.archive.store import FILES_ENV, FILES_SETTING, files_url, open_content

    files = files_url(archive)
    if not files:
        if required:
            raise RuntimeError(
                f"no file store: add ?files=... or set ${FILES_ENV} or {FILES_SETTING}"
            )
        return "in the archive directory"
    return open_content(files, create=False).probe()


def extra_rows() -> list[Check]:
    """One row per optional extra: installed or missing (not a failure: a host
    needs only the extras of the steps and backends it uses), what it is for."""
    from wsrun.core import extras

    return [
        Check(
            "extra",
            f"wsrun[{extra}]",
            True,
            f"installed: {extras.PURPOSES[extra]}"
            if present
            else f"missing: {extras.PURPOSES[extra]} (pip install 'wsrun[{extra}]')",
        )
        for extra, present in extras.status().items()
    ]


def run_checks() -> list[Check]:
    return [check(backend, url) for backend, url in configured_backends()]


def doctor(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show which state store, bus, archive and journal are in use and whether
    each is reachable (exit 1 if any is not), and which extras are installed."""
    checks = run_checks()
    rows = checks + extra_rows()
    if as_json:
        print(json.dumps([c.__dict__ for c in rows], indent=2))
    else:
        width = max(len(c.url) for c in rows)
        for c in rows:
            state, detail = ("ok" if c.ok else "FAIL"), c.detail
            if c.backend == "extra":
                state, detail = c.detail.split(": ", 1)
            print(f"{c.backend:<8} {c.url:<{width}}  {state:<4}  {detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
