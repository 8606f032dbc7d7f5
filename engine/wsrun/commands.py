"""The ``wsrun`` commands other than running a recipe."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def run_command(args: list[str]) -> int:
    try:
        app(args=args, prog_name="wsrun")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="Recipe files, directories or packaged names")],
) -> None:
    """Check recipes; print every problem as file:line:col."""
    from wsrun.recipe import RecipeNotFound, resolve
    from wsrun.state.lifecycle import LifecycleError, is_lifecycle_file, load_lifecycle
    from wsrun.validate import InvalidRecipe, load_valid

    bad = 0
    for ref in files:
        try:
            path = resolve(ref)
            if is_lifecycle_file(path):
                load_lifecycle(path)
            else:
                load_valid(path)
            print(f"{ref}: ok")
        except RecipeNotFound:
            print(f"{ref}: no such recipe", file=sys.stderr)
            bad += 1
        except (InvalidRecipe, LifecycleError) as e:
            print(str(e), file=sys.stderr)
            bad += 1
    if bad:
        raise typer.Exit(2)


@app.command()
def steps(
    name: Annotated[str | None, typer.Argument(help="A step type")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The step reference as Markdown")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The parameter schema as JSON")] = False,
) -> None:
    """List step types, or print one's documentation (from its schema)."""
    from wsrun import stepdocs
    from wsrun.step import UnknownStep, load_step, params_schema, step_names

    if markdown:
        print(stepdocs.markdown_reference())
        return
    if name is None:
        for n in step_names():
            print(f"{n:<20} {stepdocs.summary(load_step(n))}")
        return
    try:
        module = load_step(name)
    except UnknownStep:
        print(f"wsrun: unknown step type '{name}' (wsrun steps lists them)", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(params_schema(module), indent=2))
    else:
        print(stepdocs.text(module))


@app.command()
def schema(
    write: Annotated[
        bool,
        typer.Option("--write", help="Write schemas/wsrun.schema.json and schemas/steps/*.json"),
    ] = False,
) -> None:
    """Print the JSON Schema of recipes with every step type's parameters."""
    from wsrun import stepdocs

    if write:
        for path in stepdocs.write_schemas():
            print(f"wrote {path}")
        return
    print(json.dumps(stepdocs.full_schema(), indent=2))


@app.command()
def runs(
    action: Annotated[str | None, typer.Argument(help="'show'")] = None,
    run_id: Annotated[str | None, typer.Argument(help="A run id (a unique part is enough)")] = None,
    limit: Annotated[int, typer.Option(help="How many runs to list")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List recent runs, or `runs show ID` for one run's steps and effects."""
    journal = _open_journal()
    if action is None:
        records = journal.runs(limit)
        if as_json:
            print(json.dumps([_run_json(r) for r in records], indent=2, default=str))
            return
        for r in records:
            took = f"{r.ended - r.started:.1f}s" if r.ended else "-"
            kind = " (dry run)" if r.dry_run else ""
            print(f"{r.id}  {_when(r.started)}  {r.shown_status:<11} {took:>8}  {r.recipe}{kind}")
        return
    if action != "show" or not run_id:
        print("usage: wsrun runs [show ID]", file=sys.stderr)
        raise typer.Exit(2)
    record = journal.run(run_id)
    if record is None:
        print(f"wsrun: no run '{run_id}'", file=sys.stderr)
        raise typer.Exit(2)
    steps_ = journal.steps(record.id)
    if as_json:
        print(json.dumps({**_run_json(record), "steps": steps_}, indent=2, default=str))
        return
    print(f"run {record.id}: {record.recipe} ({record.recipe_path})")
    print(
        f"  status {record.shown_status}{' (dry run)' if record.dry_run else ''}, started {_when(record.started)}"
    )
    print(f"  inputs {json.dumps(record.inputs)}")
    if record.error:
        print(f"  error: {record.error}")
    for s in steps_:
        print(f"  {s['key']:<24} {s['uses']:<14} {s['status']:<8} {len(s['effects'])} effects")
        if s["error"]:
            print(f"      {s['error']}")
    if record.outputs:
        print(f"  outputs {json.dumps(record.outputs)}")


def _open_journal() -> Any:
    """The configured journal, or exit 2 with the one-line reason it cannot be used."""
    from wsrun.journal import Journal, JournalError

    try:
        return Journal()
    except JournalError as e:
        print(f"wsrun: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _run_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "recipe": r.recipe,
        "recipe_path": r.recipe_path,
        "status": r.shown_status,
        "dry_run": r.dry_run,
        "inputs": r.inputs,
        "started": r.started,
        "ended": r.ended,
        "outputs": r.outputs,
        "error": r.error,
    }


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
    profile: Annotated[str | None, typer.Option(help="Settings profile")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE")] = None,
) -> None:
    """Continue a failed or interrupted run from its first unfinished step, with the same inputs."""
    from wsrun.cli import execute
    from wsrun.validate import InvalidRecipe, load_valid

    journal = _open_journal()
    record = journal.run(run_id)
    if record is None:
        print(f"wsrun: no run '{run_id}'", file=sys.stderr)
        raise typer.Exit(2)
    if record.status == "running" and record.shown_status == "running":
        print(f"wsrun: run {record.id} is still running (pid {record.pid})", file=sys.stderr)
        raise typer.Exit(2)
    if record.status in ("ok", "changed"):
        print(f"wsrun: run {record.id} already finished ({record.status}); nothing to resume")
        return
    if record.dry_run:
        print(
            f"wsrun: run {record.id} was a dry run; run the recipe again instead", file=sys.stderr
        )
        raise typer.Exit(2)
    if "********" in record.inputs.values():
        print(
            f"wsrun: run {record.id} had secret inputs, which the journal does not keep; run it again",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    try:
        recipe = load_valid(record.recipe_path)
    except InvalidRecipe as e:
        print(str(e), file=sys.stderr)
        raise typer.Exit(2) from None
    finished = journal.finished_steps(record.id)
    options = {
        "json": as_json,
        "verbose": verbose,
        "profile": profile,
        "set": set_ or [],
        "dry_run": False,
        "quiet": False,
    }
    import os

    if record.workdir and os.path.isdir(record.workdir):
        os.chdir(record.workdir)
    raise typer.Exit(execute(recipe, record.inputs, options, run_id=record.id, resume=finished))


@app.command()
def settings(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Setting names (default: all from the profile)")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Settings profile")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE")] = None,
) -> None:
    """Show each setting's value and where it came from (secrets masked)."""
    from wsrun.cliargs import parse_sets
    from wsrun.settings import Settings, SettingsError, display

    try:
        s = Settings(profile=profile, overrides=parse_sets(set_ or []))
    except (SettingsError, ValueError) as e:
        print(f"wsrun: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"profile: {s.profile or '(none)'}")
    for path in s.files_searched:
        print(f"  searched {path}")
    missing = 0
    for key in keys or s.names():
        found = s.get(key)
        if found is None:
            print(f"{key}: (not set; {s.where_searched(key)})")
            missing += 1
        else:
            print(f"{found.name} = {display(found.name, found.value)}    # {found.source}")
    if missing:
        raise typer.Exit(1)


@app.command()
def recipes() -> None:
    """List the packaged recipes."""
    from wsrun.recipe import load_recipe
    from wsrun.resources import recipes_dir
    from wsrun.state.lifecycle import is_lifecycle_document

    root = recipes_dir()
    for path in sorted(root.rglob("*.yaml")):
        name = str(path.relative_to(root))[: -len(".yaml")]
        try:
            recipe = load_recipe(str(path))
            if is_lifecycle_document(recipe.doc.data):
                continue  # a state lifecycle (alma/ous-lifecycle), not a recipe
            first_paragraph = recipe.description.strip().split("\n\n")[0]
            summary = " ".join(first_paragraph.split())
        except Exception:  # a broken packaged recipe still gets listed
            summary = ""
        print(f"{name:<28} {summary}")


from wsrun.bus.cli import bus_app  # noqa: E402  (wsrun bus ...)
from wsrun.worker_cli import worker  # noqa: E402  (wsrun worker ...)

app.add_typer(bus_app, name="bus")
app.command("worker")(worker)

archive_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="List, inspect, retrieve and audit the archive.",
)
app.add_typer(archive_app, name="archive")

from wsrun.state.cli import state_app  # noqa: E402  (its own module)

app.add_typer(state_app, name="state")

ArchiveOption = Annotated[
    str | None,
    typer.Option(
        "--archive",
        help="Archive URL (default: $WSRUN_ARCHIVE_URL, the setting, $WSRUN_HOME/archive)",
    ),
]


def _open_archive(url: str | None) -> Any:
    from wsrun.archive_store import ArchiveError, ArchiveStore, archive_url

    try:
        return ArchiveStore.open(archive_url(url), create=False)
    except ArchiveError as e:
        print(f"wsrun: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


@archive_app.command("ls")
def archive_ls(
    archive: ArchiveOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List the archived products, oldest first."""
    store = _open_archive(archive)
    records = store.products()
    if as_json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return
    for r in records:
        kind = "" if r.science else "  (ancillary)"
        print(f"{r.locator}  {_when(r.ingested)}  {r.filename}{kind}")


@archive_app.command("show")
def archive_show(
    locator: Annotated[str, typer.Argument(help="The product's locator")],
    archive: ArchiveOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One product: type, files with checksums, provenance, ancillary products."""
    store = _open_archive(archive)
    record = store.product(locator)
    if record is None:
        print(f"wsrun: no product '{locator}'", file=sys.stderr)
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(record.to_json(), indent=2))
        return
    print(f"{record.locator}")
    print(f"  type {record.type}, telescope {record.telescope}, ingested {_when(record.ingested)}")
    print(f"  from {record.ingestion_path}/{record.filename}")
    if record.parent:
        print(f"  ancillary of {record.parent}")
    for f in record.files:
        print(f"  file {f.name}  {f.size} bytes  sha256 {f.sha256}")
    for loc in record.inputs:
        print(f"  derived from {loc}")
    for loc in record.outputs:
        print(f"  used by {loc}")
    for loc in record.ancillary:
        print(f"  ancillary {loc}")


@archive_app.command("get")
def archive_get(
    locator: Annotated[str, typer.Argument(help="The product's locator")],
    dest: Annotated[str, typer.Argument(help="Where to write it (into it, if a directory)")],
    archive: ArchiveOption = None,
) -> None:
    """Retrieve a product's files, checksums verified, each written atomically."""
    from wsrun import locks
    from wsrun.archive_store import ArchiveError

    store = _open_archive(archive)
    try:
        held = locks.acquire(
            [os.path.abspath(dest)], "wsrun archive get", locks.wait_seconds(os.environ)
        )
        try:
            for path in store.get(locator, dest):
                print(path)
        finally:
            held.release()
    except (ArchiveError, OSError, locks.DestinationBusy) as e:
        print(f"wsrun: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


@archive_app.command("verify")
def archive_verify(
    archive: ArchiveOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Re-hash every stored file; report missing and changed ones (exit 1 if any)."""
    store = _open_archive(archive)
    problems = store.verify()
    if as_json:
        print(json.dumps([p.__dict__ for p in problems], indent=2))
    else:
        for p in problems:
            print(f"{p.locator}: {p.name}: {p.issue} (sha256 {p.sha256})")
        print(f"{len(store.products())} products checked, {len(problems)} problems")
        if orphans := store.orphans():
            print(f"{len(orphans)} stored files no product refers to (an interrupted ingest's;")
            print("  the next ingest removes them)")
    if problems:
        raise typer.Exit(1)


from wsrun.web.cli import graph_command, serve_command  # noqa: E402  (wsrun serve, wsrun graph)

app.command("serve")(serve_command)
app.command("graph")(graph_command)

from wsrun.db.commands import db_app  # noqa: E402  (wsrun db upgrade|status)
from wsrun.doctor import doctor  # noqa: E402  (wsrun doctor)

app.add_typer(db_app, name="db")
app.command("doctor")(doctor)
