"""The ``wsrun`` commands other than running a recipe.

One piece: it is the Typer application, one short function per command, each
importing what it needs when it runs (so ``wsrun --help`` stays fast); the bigger
command groups (state, bus, db, worker, serve) are modules of their own.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


#: Options every command takes, as a run does: -q prints nothing but errors, -v a
#: traceback with an unexpected error. A command that declares them itself
#: (resume) gets them; for the others ``run_command`` handles them.
QUIET = ("-q", "--quiet")
VERBOSE = ("-v", "--verbose")


def run_command(args: list[str]) -> int:
    """Run ``wsrun COMMAND ...``; the exit status. Usage errors read like a
    recipe's (a usage line, then ``wsrun COMMAND: error: ...``), not a box."""
    import contextlib
    import io

    from wsrun.core.journal import JournalError

    command = typer.main.get_command(app)
    args, quiet, verbose = _common_options(command, args)
    out = io.StringIO() if quiet else sys.stdout
    try:
        with contextlib.redirect_stdout(out):
            code = command.main(args=args, prog_name="wsrun", standalone_mode=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except JournalError as e:  # the journal cannot be read: one line, no traceback
        print(f"wsrun: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # Typer's own exceptions and click's (which newer Typer vendors): by class name.
        kinds = {c.__name__ for c in type(e).__mro__}
        ctx = getattr(e, "ctx", None)
        if "Exit" in kinds:
            return int(getattr(e, "exit_code", 0))
        if "Abort" in kinds:
            return 130
        if "NoArgsIsHelpError" in kinds:  # the help (some Typer versions print it already)
            text = e.format_message().strip()  # type: ignore[attr-defined]
            if text:
                print(text, file=sys.stderr)
            return 2
        if "UsageError" in kinds:
            prog = ctx.command_path if ctx is not None else "wsrun"
            usage = ctx.get_usage().replace("Usage: ", "usage: ", 1) + "\n" if ctx else ""
            print(f"{usage}{prog}: error: {_lower_first(e.format_message())}", file=sys.stderr)  # type: ignore[attr-defined]
            return 2
        if "ClickException" in kinds or "TyperException" in kinds:
            print(f"wsrun {args[0]}: error: {e.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
            return int(getattr(e, "exit_code", 1))
        # A defect or an unforeseen failure: one line, the traceback with -v.
        if verbose:
            import traceback

            traceback.print_exc()
        hint = "" if verbose else " (-v shows the traceback)"
        print(f"wsrun {args[0]}: error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _lower_first(message: str) -> str:
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def _common_options(command: Any, args: list[str]) -> tuple[list[str], bool, bool]:
    """``args`` without the -q/-v the command does not declare itself, and
    whether each was given."""
    leaf = command
    for word in args:
        sub = getattr(leaf, "commands", {}).get(word)
        if sub is None:
            break
        leaf = sub
    declared = {o for p in leaf.params for o in getattr(p, "opts", ())}
    takes_value = {
        o
        for p in leaf.params
        if p.param_type_name == "option" and not getattr(p, "is_flag", False)
        for o in p.opts
    }
    kept: list[str] = []
    quiet = verbose = False
    for i, word in enumerate(args):
        if word == "--":
            kept += args[i:]
            break
        if word not in declared and (not kept or kept[-1] not in takes_value):
            if word in QUIET:
                quiet = True
                continue
            if word in VERBOSE:
                verbose = True
                continue
        kept.append(word)
    return kept, quiet, verbose


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="Recipe files, directories or packaged names")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One result per file, problems with file, line, col")
    ] = False,
) -> None:
    """Check recipes; print every problem as file:line:col."""
    from wsrun.core.recipe import RecipeNotFound, resolve
    from wsrun.core.validate import InvalidRecipe, load_valid
    from wsrun.stores.state.lifecycle import LifecycleError, is_lifecycle_file, load_lifecycle

    results = []
    for ref in files:
        problems: list[dict[str, Any]] = []
        try:
            path = resolve(ref)
            if is_lifecycle_file(path):
                load_lifecycle(path)
            else:
                load_valid(path)
            if not as_json:
                print(f"{ref}: ok")
        except RecipeNotFound:
            problems = [{"message": "no such recipe"}]
            if not as_json:
                print(f"{ref}: no such recipe", file=sys.stderr)
        except InvalidRecipe as e:
            problems = [
                {
                    "file": p.where.file,
                    "line": p.where.line,
                    "col": p.where.col,
                    "message": p.message,
                }
                for p in e.problems
            ]
            if not as_json:
                print(str(e), file=sys.stderr)
        except LifecycleError as e:
            problems = [{"message": str(e)}]
            if not as_json:
                print(str(e), file=sys.stderr)
        results.append({"recipe": ref, "ok": not problems, "problems": problems})
    if as_json:
        print(json.dumps(results, indent=2))
    if not all(r["ok"] for r in results):
        raise typer.Exit(2)


@app.command()
def steps(
    name: Annotated[str | None, typer.Argument(help="A step type")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The step reference as Markdown")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The list, or the step's parameter schema, as JSON")
    ] = False,
) -> None:
    """List step types, or print one's documentation (from its schema)."""
    from wsrun.core import stepdocs
    from wsrun.core.step import UnknownStep, load_step, params_schema, step_names

    if markdown:
        print(stepdocs.markdown_reference())
        return
    if name is None:
        rows = [(n, stepdocs.summary(load_step(n))) for n in step_names()]
        if as_json:
            print(json.dumps([{"name": n, "summary": s} for n, s in rows], indent=2))
        for n, summary in [] if as_json else rows:
            print(f"{n:<20} {summary}")
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
    from wsrun.core import stepdocs

    if write:
        for path in stepdocs.write_schemas():
            print(f"wrote {path}")
        return
    print(json.dumps(stepdocs.full_schema(), indent=2))


@app.command()
def runs(
    action: Annotated[str | None, typer.Argument(help="'show' or 'prune'")] = None,
    run_id: Annotated[str | None, typer.Argument(help="A run id (a unique part is enough)")] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="How many runs to list (20); with --effects, effects a page (100)"),
    ] = None,
    effects: Annotated[
        bool, typer.Option("--effects", help="show: list each step's effects, a page at a time")
    ] = False,
    page: Annotated[int, typer.Option(help="show --effects: which page (from 1)")] = 1,
    step: Annotated[str | None, typer.Option(help="show --effects: only this step")] = None,
    older_than: Annotated[
        str | None, typer.Option(help="prune: runs older than this (30d, 12h, 2w)")
    ] = None,
    keep: Annotated[int | None, typer.Option(help="prune: always keep the N newest runs")] = None,
    include_resumable: Annotated[
        bool,
        typer.Option(
            "--include-resumable",
            help="prune: failed and interrupted runs too (not resumable after)",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="prune: say what would go, delete nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List recent runs, `runs show ID` for one run's steps and effects, or
    `runs prune --older-than 30d --keep N` to delete old runs from the journal."""
    journal = _open_journal()
    if action is None:
        records = journal.runs(limit or 20)
        if as_json:
            print(json.dumps([_run_json(r) for r in records], indent=2, default=str))
            return
        for r in records:
            took = f"{r.ended - r.started:.1f}s" if r.ended else "-"
            kind = " (dry run)" if r.dry_run else ""
            print(f"{r.id}  {_when(r.started)}  {r.shown_status:<11} {took:>8}  {r.recipe}{kind}")
        return
    if action == "prune":
        _prune(journal, older_than, keep, include_resumable, dry_run, as_json)
        return
    if action != "show" or not run_id:
        print(
            "usage: wsrun runs [show ID | prune --older-than AGE --keep N]\nwsrun runs: error: "
            + (f"unknown action '{action}'" if action != "show" else "show needs a run id"),
            file=sys.stderr,
        )
        raise typer.Exit(2)
    record = journal.run(run_id)
    if record is None:
        print(f"wsrun: no run '{run_id}'", file=sys.stderr)
        raise typer.Exit(2)
    if page < 1 or (limit is not None and limit < 1):
        print("wsrun runs show: --page and --limit count from 1", file=sys.stderr)
        raise typer.Exit(2)
    size = limit or 100
    if effects:
        steps_ = journal.steps(record.id, effects_limit=0)
        if step is not None:
            steps_ = [s for s in steps_ if s["key"] == step]
            if not steps_:
                print(f"wsrun: run {record.id} has no step '{step}'", file=sys.stderr)
                raise typer.Exit(2)
        for s in steps_:
            s["effects"] = journal.effects(record.id, s["key"], (page - 1) * size, size)
    else:  # the text lists counts only: no effect need be read
        steps_ = journal.steps(record.id, effects_limit=None if as_json else 0)
    from wsrun.core.masking import printable_data

    if as_json:
        paging = {"page": page, "limit": size} if effects else {}
        print(json.dumps({**_run_json(record), **paging, "steps": steps_}, indent=2, default=str))
        return
    print(f"run {record.id}: {record.recipe} ({record.recipe_path})")
    print(
        f"  status {record.shown_status}{' (dry run)' if record.dry_run else ''}, started {_when(record.started)}"
    )
    print(f"  inputs {json.dumps(printable_data(record.inputs), ensure_ascii=False)}")
    if record.error:
        print(f"  error: {record.error}")
    for s in steps_:
        print(f"  {s['key']:<24} {s['uses']:<14} {s['status']:<8} {s['effect_count']} effects")
        if s["error"]:
            print(f"      {s['error']}")
        if s["status"] == "running" and s.get("progress"):
            print(f"      {_progress_line(s['progress'], record.shown_status == 'running')}")
        if effects and s["effect_count"]:
            first = (page - 1) * size
            for e in map(printable_data, s["effects"]):  # a path's bytes not UTF-8 as \xNN
                rest = {k: v for k, v in e.items() if k not in ("op", "path")}
                extra = f" {json.dumps(rest, ensure_ascii=False)}" if rest else ""
                print(f"      {e.get('op', '?')} {e.get('path', '')}{extra}")
            shown = f"{first + 1}-{first + len(s['effects'])}" if s["effects"] else "none"
            more = f"; --page {page + 1} for more" if first + size < s["effect_count"] else ""
            print(f"      (effects {shown} of {s['effect_count']}{more})")
    if record.outputs:
        print(f"  outputs {json.dumps(record.outputs)}")


def _progress_line(progress: dict[str, Any], live: bool) -> str:
    """A running step's newest progress as the journal holds it: the heartbeat
    line and how old it is (a run that died leaves its last figures)."""
    import time

    line = progress.get("line") or ""
    label = progress.get("label")
    age = max(0.0, time.time() - float(progress.get("updated") or 0))
    when = f"{age:.0f}s ago" if live else f"at {_when(float(progress.get('updated') or 0))}"
    return f"progress {label + ': ' if label else ''}{line} (as of {when})"


def _prune(
    journal: Any,
    older_than: str | None,
    keep: int | None,
    resumable: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """`wsrun runs prune`: delete old runs, or say which would go (--dry-run)."""
    from wsrun.core.retention import parse_age

    try:
        age = None if older_than is None else parse_age(older_than)
        if keep is not None and keep < 0:
            raise ValueError("--keep counts runs: 0 or more")
        pruned = journal.prune(age, keep, resumable=resumable, dry_run=dry_run)
    except ValueError as e:  # JournalError is one too: one line naming the journal
        print(f"wsrun runs prune: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        print(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "pruned": pruned.runs,
                    "held": pruned.held,
                    "kept": pruned.kept,
                },
                indent=2,
            )
        )
        return
    verb = "would prune" if dry_run else "pruned"
    print(f"{verb} {len(pruned.runs)} runs; the journal keeps {pruned.kept}")
    for run_id in pruned.runs if dry_run else ():
        print(f"  {run_id}")
    if pruned.held:
        why = "still running" if resumable else "still running or resumable"
        print(
            f"kept {len(pruned.held)} old runs {why}"
            + ("" if resumable else " (--include-resumable prunes the resumable ones)")
        )


def _open_journal() -> Any:
    """The configured journal, or exit 2 with the one-line reason it cannot be used."""
    from wsrun.core.journal import Journal, JournalError

    try:
        return Journal()
    except JournalError as e:
        print(f"wsrun: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _run_json(r: Any) -> dict[str, Any]:
    from wsrun.core.masking import printable_data

    return {
        "id": r.id,
        "recipe": r.recipe,
        "recipe_path": r.recipe_path,
        "status": r.shown_status,
        "dry_run": r.dry_run,
        "inputs": printable_data(r.inputs),  # a path's bytes that are not UTF-8 as \\xNN
        "started": r.started,
        "ended": r.ended,
        "outputs": r.outputs,
        "error": r.error,
    }


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="List every effect; tracebacks on errors")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only errors")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", "-n", help="Show what resuming would do (a new dry run); change nothing"
        ),
    ] = False,
    profile: Annotated[str | None, typer.Option(help="Settings profile")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE")] = None,
) -> None:
    """Continue a failed or interrupted run from its first unfinished step, with the same inputs.

    Takes the options of a run (-q, -v, --json, --dry-run, --set, --profile), with
    the same effect: -q prints only errors, --json prints only the JSON result."""
    from wsrun.cli.run import execute
    from wsrun.core.validate import InvalidRecipe, load_valid

    journal = _open_journal()
    record = journal.run(run_id)
    if record is None:
        print(f"wsrun: no run '{run_id}'", file=sys.stderr)
        raise typer.Exit(2)
    if record.status == "running" and record.shown_status == "running":
        print(f"wsrun: run {record.id} is still running (pid {record.pid})", file=sys.stderr)
        raise typer.Exit(2)
    if record.status in ("ok", "changed"):
        if as_json:  # stdout stays JSON: the run as it finished
            print(
                json.dumps(
                    {"run_id": record.id, **_run_json(record), "resumed": False},
                    indent=2,
                    default=str,
                )
            )
        elif not quiet:
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
    finished = journal.finished_steps(record.id)  # read whole (or spooled): closed now
    journal.close()  # the run's own connection is then the last, and removes its log
    options = {
        "json": as_json,
        "verbose": verbose,
        "profile": profile,
        "set": set_ or [],
        "dry_run": dry_run,
        "quiet": quiet,
    }
    import os

    if record.workdir and os.path.isdir(record.workdir):
        os.chdir(record.workdir)
    # A dry run is a run of its own (its own id and journal record): the
    # interrupted run stays as it was, to be resumed for real.
    target = None if dry_run else record.id
    raise typer.Exit(execute(recipe, record.inputs, options, run_id=target, resume=finished))


@app.command()
def settings(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Setting names (default: all from the profile)")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Settings profile")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show each setting's value and where it came from (secrets masked)."""
    from wsrun.cli.recipe_args import parse_sets
    from wsrun.core.settings import Settings, SettingsError, display

    try:
        s = Settings(profile=profile, overrides=parse_sets(set_ or []))
    except (SettingsError, ValueError) as e:
        print(f"wsrun settings: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    rows = [(key, s.get(key)) for key in keys or s.names()]
    missing = [key for key, found in rows if found is None]
    if as_json:
        print(
            json.dumps(
                {
                    "profile": s.profile,
                    "searched": s.files_searched,
                    "settings": [
                        {"name": f.name, "value": display(f.name, f.value), "source": f.source}
                        for _, f in rows
                        if f is not None
                    ],
                    "missing": missing,
                },
                indent=2,
            )
        )
    else:
        print(f"profile: {s.profile or '(none)'}")
        for path in s.files_searched:
            print(f"  searched {path}")
        for key, found in rows:
            if found is None:
                print(f"{key}: (not set; {s.where_searched(key)})")
            else:
                print(f"{found.name} = {display(found.name, found.value)}    # {found.source}")
    if missing:
        raise typer.Exit(1)


@app.command()
def recipes(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the packaged recipes."""
    from wsrun.core.recipe import is_lifecycle_document, load_recipe
    from wsrun.core.resources import packaged_files

    found = []
    for name, path in packaged_files():
        try:
            recipe = load_recipe(str(path))
            if is_lifecycle_document(recipe.doc.data):
                continue  # a state lifecycle (alma/ous-lifecycle), not a recipe
            first_paragraph = recipe.description.strip().split("\n\n")[0]
            summary = " ".join(first_paragraph.split())
        except Exception:  # a broken packaged recipe still gets listed
            summary = ""
        found.append({"name": name, "summary": summary})
    if as_json:
        print(json.dumps(found, indent=2))
        return
    for r in found:
        print(f"{r['name']:<28} {r['summary']}")


from wsrun.cli.bus import bus_app  # noqa: E402  (wsrun bus ...)
from wsrun.cli.worker import worker  # noqa: E402  (wsrun worker ...)

app.add_typer(bus_app, name="bus")
app.command("worker")(worker)

archive_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="List, inspect, retrieve and audit the archive.",
)
app.add_typer(archive_app, name="archive")

from wsrun.cli.state import state_app  # noqa: E402  (its own module)

app.add_typer(state_app, name="state")

ArchiveOption = Annotated[
    str | None,
    typer.Option(
        "--archive",
        help="Archive URL (default: $WSRUN_ARCHIVE_URL, the setting, $WSRUN_HOME/archive)",
    ),
]


def _open_archive(url: str | None) -> Any:
    from wsrun.stores.archive.store import ArchiveError, ArchiveStore, archive_url

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
    as_json: Annotated[bool, typer.Option("--json", help="The files written, as JSON")] = False,
) -> None:
    """Retrieve a product's files, checksums verified, each written atomically."""
    from wsrun.core import locks
    from wsrun.stores.archive.store import ArchiveError

    store = _open_archive(archive)
    try:
        held = locks.acquire(
            [os.path.abspath(dest)], "wsrun archive get", locks.wait_seconds(os.environ)
        )
        try:
            written = [str(path) for path in store.get(locator, dest)]
        finally:
            held.release()
        for line in [json.dumps(written, indent=2)] if as_json else written:
            print(line)
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


from wsrun.cli.serve import graph_command, serve_command  # noqa: E402  (wsrun serve, wsrun graph)

app.command("serve")(serve_command)
app.command("graph")(graph_command)

from wsrun.cli.db import db_app  # noqa: E402  (wsrun db upgrade|status)
from wsrun.cli.doctor import doctor  # noqa: E402  (wsrun doctor)

app.add_typer(db_app, name="db")
app.command("doctor")(doctor)
