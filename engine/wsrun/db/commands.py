"""``wsrun db upgrade`` and ``wsrun db status``: the PostgreSQL schema of the
scale-out backends (see ``wsrun.db``)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

db_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Create or upgrade the PostgreSQL tables of the state store, archive and journal.",
)

UrlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--url",
        help="A postgresql:// URL (repeatable; default: every PostgreSQL database the"
        " configured state store, bus, archive and journal use)",
    ),
]


def _targets(urls: list[str] | None) -> list[str]:
    """The databases to act on: the given URLs, else the configured backends' ones."""
    from wsrun import extras
    from wsrun.db import conninfo, is_postgres
    from wsrun.doctor import configured_backends

    if not extras.installed("postgres"):
        print(extras.message("wsrun db", "postgres"), file=sys.stderr)
        raise typer.Exit(2)

    if not urls:
        urls = [url for _, url in configured_backends() if url and is_postgres(url)]
        if not urls:
            print(
                "wsrun: no backend uses PostgreSQL (see `wsrun doctor`); pass --url postgresql://...",
                file=sys.stderr,
            )
            raise typer.Exit(2)
    for url in urls:
        if not is_postgres(url):
            print(f"wsrun: {url}: not a postgresql:// URL", file=sys.stderr)
            raise typer.Exit(2)
    by_database = {conninfo(u): u for u in urls}
    return list(by_database.values())


@db_app.command("upgrade")
def db_upgrade(
    url: UrlOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Apply the pending migrations (safe to run again, and from several hosts at once)."""
    import json

    from wsrun.db import DbError, conninfo, mask, upgrade

    report = []
    for target in _targets(url):
        shown = mask(conninfo(target))
        try:
            applied = upgrade(target)
        except DbError as e:
            print(f"wsrun: {e}", file=sys.stderr)
            raise typer.Exit(1) from None
        if as_json:
            report.append({"database": shown, "applied": list(applied)})
        elif applied:
            for name in applied:
                print(f"{shown}: applied {name}")
        else:
            print(f"{shown}: up to date")
    if as_json:
        print(json.dumps(report, indent=2))


@db_app.command("status")
def db_status(
    url: UrlOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Show the applied and pending migrations (exit 1 if any are pending)."""
    import json

    from wsrun.db import DbError, conninfo, mask, status

    behind = False
    report = []
    for target in _targets(url):
        try:
            found = status(target)
        except DbError as e:
            print(f"wsrun: {e}", file=sys.stderr)
            raise typer.Exit(1) from None
        behind = behind or not found.up_to_date
        if as_json:
            report.append(
                {
                    "database": mask(conninfo(target)),
                    "version": found.current,
                    "latest": found.latest,
                    "applied": [{"name": name, "at": str(at)} for _, name, at in found.applied],
                    "pending": [m.name for m in found.pending],
                    "changed": list(found.changed),
                    "unknown": list(found.unknown),
                }
            )
            continue
        print(f"{mask(conninfo(target))}: schema version {found.current} of {found.latest}")
        for _, name, at in found.applied:
            print(f"  applied  {name}  {at}")
        for migration in found.pending:
            print(f"  pending  {migration.name}")
        for name in found.changed:
            print(f"  warning: {name} differs from the file this wsrun ships")
        for name in found.unknown:
            print(f"  note: {name} is not known to this wsrun (a newer one applied it)")
    if as_json:
        print(json.dumps(report, indent=2))
    if behind:
        if not as_json:
            print("run `wsrun db upgrade` to apply the pending migrations")
        raise typer.Exit(1)
