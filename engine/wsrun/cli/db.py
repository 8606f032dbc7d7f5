"""``wsrun db upgrade`` and ``wsrun db status``: the schema of every SQL store
(state, journal, archive, bus) on SQLite and PostgreSQL (see ``wsrun.core.migrate``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

db_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Create or upgrade the tables of the state store, journal, archive and bus"
    " (SQLite files and PostgreSQL databases).",
)

UrlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--url",
        help="A postgresql:// URL, or a SQLite file (sqlite:///path or a path; an embedded"
        " archive's directory names its archive.db). Repeatable; default: the databases the"
        " configured state store, bus, archive and journal use",
    ),
]
StoreOption = Annotated[
    list[str] | None,
    typer.Option(
        "--store",
        help="Only this store: state, journal, archive or bus (repeatable; a SQLite file"
        " made before migrations were recorded is recognised by its tables)",
    ),
]


@dataclass
class Target:
    """One database to act on, and which of its stores."""

    url: str
    #: None: every store the database holds (PostgreSQL) or records (SQLite).
    stores: list[str] | None
    postgres: bool
    #: Made from the configuration, not named by --url: a SQLite file that does
    #: not exist yet is left alone (its store creates it, migrated, when first used).
    configured: bool = False

    @property
    def shown(self) -> str:
        from wsrun.core.db import conninfo, mask

        return mask(conninfo(self.url)) if self.postgres else self.url


def _sqlite_target(url: str) -> str:
    """A SQLite URL or path; an embedded archive's directory means its archive.db."""
    import os

    from wsrun.core.migrate import sqlite_file

    path = sqlite_file(url.split("?", 1)[0])
    if os.path.isdir(path):
        path = os.path.join(path, "archive.db")
    return "sqlite:///" + path.lstrip("/")


def _targets(urls: list[str] | None, stores: list[str] | None) -> list[Target]:
    """The databases to act on: the given URLs, else the configured backends' ones."""
    import os

    from wsrun.cli.doctor import configured_backends
    from wsrun.core.db import DbError, conninfo, is_postgres
    from wsrun.core.migrate import STORES

    for store in stores or []:
        if store not in STORES:
            _fail(f"no store '{store}' (known: {', '.join(STORES)})", code=2)
    found: dict[str, Target] = {}
    try:
        if urls:
            for url in urls:
                if is_postgres(url):
                    found.setdefault(conninfo(url), Target(url, stores, True))
                else:
                    path = _sqlite_target(url)
                    found.setdefault(path, Target(path, stores, False))
            return list(found.values())
        for backend, url in configured_backends():
            if not url or (stores and backend not in stores):
                continue
            if is_postgres(url):
                if backend != "bus":
                    found.setdefault(conninfo(url), Target(url, stores, True, configured=True))
            elif backend == "archive" or url.startswith("sqlite:") or "://" not in url:
                if backend == "archive":  # the embedded archive's directory, made or not
                    path = "sqlite:///" + os.path.join(_archive_root(url), "archive.db").lstrip("/")
                else:
                    path = _sqlite_target(url)
                target = found.setdefault(path, Target(path, [], False, configured=True))
                if target.stores is not None and backend not in target.stores:
                    target.stores.append(backend)
    except DbError as e:
        _fail(str(e), code=2)
    if not found:
        _fail("no backend keeps SQL tables (see `wsrun doctor`); pass --url", code=2)
    return list(found.values())


def _archive_root(url: str) -> str:
    from wsrun.stores.archive.store import root_of

    return root_of(url.split("?", 1)[0])


def _fail(message: str, code: int = 1) -> None:
    print(f"wsrun: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _missing(target: Target) -> bool:
    """A configured SQLite file that does not exist yet (nothing to do)."""
    import os

    from wsrun.core.migrate import sqlite_file

    return target.configured and not target.postgres and not os.path.exists(sqlite_file(target.url))


@db_app.command("upgrade")
def db_upgrade(
    url: UrlOption = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Apply the pending migrations (safe to run again, and from several hosts at once)."""
    import json

    from wsrun.core.db import DbError
    from wsrun.core.migrate import upgrade

    report = []
    for target in _targets(url, store):
        if _missing(target):
            if as_json:
                report.append({"database": target.shown, "applied": [], "exists": False})
            else:
                print(f"{target.shown}: not created yet (made up to date when first used)")
            continue
        try:
            applied = upgrade(target.url, target.stores or None)
        except DbError as e:
            _fail(str(e))
        if as_json:
            report.append({"database": target.shown, "applied": list(applied)})
        elif applied:
            for name in applied:
                print(f"{target.shown}: applied {name}")
        else:
            print(f"{target.shown}: up to date")
    if as_json:
        print(json.dumps(report, indent=2))


@db_app.command("status")
def db_status(
    url: UrlOption = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show each store's applied and pending migrations (exit 1 if any are pending,
    edited since they were applied, or newer than this wsrun)."""
    import json

    from wsrun.core.db import DbError
    from wsrun.core.migrate import status

    behind = False
    report: list[dict[str, Any]] = []
    for target in _targets(url, store):
        try:
            found = status(target.url, target.stores or None)
        except DbError as e:
            _fail(str(e))
        for each in found:
            pending = each.pending if each.exists else []
            behind = behind or bool(pending or each.changed or each.unknown)
            if as_json:
                report.append(
                    {
                        "database": target.shown,
                        "store": each.store,
                        "exists": each.exists,
                        "version": each.current,
                        "latest": each.latest,
                        "applied": [{"name": a.name, "at": a.at} for a in each.applied],
                        "pending": [m.name for m in pending],
                        "changed": list(each.changed),
                        "unknown": list(each.unknown),
                    }
                )
                continue
            head = f"{target.shown} [{each.store}]"
            if not each.exists:
                print(f"{head}: not created yet (made at version {each.latest} when first used)")
                continue
            print(f"{head}: schema version {each.current} of {each.latest}")
            for a in each.applied:
                print(f"  applied  {a.name}  {a.at}")
            for migration in pending:
                print(f"  pending  {migration.name}")
            for name in each.changed:
                print(f"  error: {name} was edited after it was applied (checksum differs)")
            for name in each.unknown:
                print(f"  error: {name} is not known to this wsrun (a newer one applied it)")
    if as_json:
        print(json.dumps(report, indent=2))
    if behind:
        if not as_json:
            print(
                "run `wsrun db upgrade` to apply pending migrations; an edited or unknown one"
                " needs the wsrun that applied it"
            )
        raise typer.Exit(1)
