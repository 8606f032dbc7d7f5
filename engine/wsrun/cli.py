"""The ``wsrun`` command.

``wsrun RECIPE [recipe options]`` runs a recipe; the other commands (validate,
plan, steps, schema, runs, resume, settings) live in ``wsrun.commands``. This
module imports almost nothing at start-up so ``wsrun --help`` answers at once.
"""

from __future__ import annotations

import sys
from typing import Any

HELP = """\
usage: wsrun RECIPE [recipe options] [--dry-run] [--json] [--set KEY=VALUE]... [--profile P] [-v] [-q]
       wsrun COMMAND [options]

Run a declarative YAML recipe that moves and packages data products.
RECIPE is a file (recipe.yaml), a directory holding recipe.yaml, or a packaged
recipe name (nrao/deliver). `wsrun RECIPE --help` lists the recipe's own options.

commands:
  validate FILE...     check recipes; every problem as file:line:col
  plan RECIPE ...      show what a run would do (same as --dry-run)
  steps [NAME]         list step types, or print one's documentation
  schema               print the JSON Schema for recipes (for editors)
  runs [show ID]       list recent runs, or show one with its steps
  resume ID            continue a failed or interrupted run
  settings [KEY...]    show settings and where each value comes from
  recipes              list the packaged recipes
  archive ls|show|get|verify   list, inspect, retrieve and audit the archive
  state ls|show|set|history|lifecycle   entities in the state store, their lifecycles
  worker RECIPE...      run recipes on messages, state changes and new files
  bus send|call|ls|show|resend|purge|queues   send and inspect bus messages
  serve [--port 8080]  the web dashboard (runs, board, QA2 review, messages)
  graph RECIPE         a recipe's steps (or --lifecycle FILE) as DOT, Mermaid or SVG
  db upgrade|status    create or upgrade the PostgreSQL tables of the backends
  doctor               which backends are in use and whether each is reachable
  completion bash|zsh  the shell completion script (eval "$(wsrun completion bash)")

Every command takes -q (only errors), -v (a traceback with an unexpected error)
and, where it prints results, --json.

exit status: 0 success, 1 a step failed, 2 invalid recipe or usage
"""

COMMANDS = (
    "validate",
    "steps",
    "schema",
    "runs",
    "resume",
    "settings",
    "recipes",
    "archive",
    "state",
    "worker",
    "bus",
    "serve",
    "graph",
    "db",
    "doctor",
)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(HELP)
        return 2
    head = args[0]
    if head in ("-h", "--help", "help"):
        sys.stdout.write(HELP)
        return 0
    if head == "--version":
        from wsrun import __version__

        print(f"wsrun {__version__}")
        return 0
    if head in ("completion", "__complete"):
        from wsrun import completion

        if head == "__complete":
            return completion.main(args[1:])
        if len(args) != 2 or args[1] not in completion.SCRIPTS:
            sys.stderr.write(
                "usage: wsrun completion bash|zsh\nwsrun completion: error: name a shell\n"
            )
            return 2
        sys.stdout.write(completion.SCRIPTS[args[1]])
        return 0
    if head == "plan":
        if len(args) < 2:
            sys.stderr.write(
                "usage: wsrun plan RECIPE [recipe options]\nwsrun plan: error: name a recipe\n"
            )
            return 2
        return run_recipe_command(args[1], [*args[2:], "--dry-run"], prog=f"wsrun plan {args[1]}")
    if head in COMMANDS:
        from wsrun.commands import run_command

        return run_command(args)
    if head.startswith("-"):
        sys.stderr.write(f"wsrun: unknown option {head}\n\n{HELP}")
        return 2
    return run_recipe_command(head, args[1:], prog=f"wsrun {head}")


def run_recipe_command(ref: str, args: list[str], prog: str) -> int:
    """Parse a recipe's own command line and run it; the exit status."""
    from wsrun.recipe import RecipeNotFound, resolve
    from wsrun.validate import InvalidRecipe, load_valid

    try:
        path = resolve(ref)
    except RecipeNotFound:
        sys.stderr.write(
            f"{prog.split()[0]}: no recipe '{ref}': not a file, a directory with recipe.yaml, or a packaged recipe (wsrun recipes)\n"
        )
        return 2
    try:
        recipe = load_valid(path)
    except InvalidRecipe as e:
        sys.stderr.write(str(e) + "\n")
        return 2
    from wsrun.cliargs import build_parser, split_namespace

    parser = build_parser(recipe, prog)
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:
        return int(e.code or 0)
    inputs, options = split_namespace(recipe, ns)
    return execute(recipe, inputs, options)


def execute(
    recipe: Any,
    inputs: dict[str, Any],
    options: dict[str, Any],
    run_id: str | None = None,
    resume: Any = None,
) -> int:
    """Run a loaded recipe with parsed inputs and print the outcome. Everything
    printed goes through the run's masker: no secret, and no undecodable byte."""
    import contextlib
    import os

    from wsrun.cliargs import parse_sets
    from wsrun.journal import Journal, JournalError
    from wsrun.masking import MaskedStream, Masker
    from wsrun.output import (
        LineEvents,
        RichProgress,
        print_report,
        report_json_lines,
        stream_is_terminal,
    )
    from wsrun.runner import Events, RunError, Runner, coerce_inputs
    from wsrun.settings import Settings, SettingsError

    masker = Masker()
    out, err = MaskedStream(sys.stdout, masker), MaskedStream(sys.stderr, masker)
    try:
        settings = Settings(
            profile=options.get("profile"), overrides=parse_sets(options.get("set") or [])
        )
        inputs = coerce_inputs(recipe, inputs, os.getcwd())
        quiet = options.get("quiet") or options.get("json")
        show_bars = not quiet and not options.get("dry_run") and stream_is_terminal(sys.stderr)
        progress = RichProgress() if show_bars else None
        events: Events = (
            Events() if quiet else LineEvents(err, bool(options.get("dry_run")), progress)
        )
        journal = Journal()
        runner = Runner(
            recipe,
            inputs,
            settings,
            dry_run=bool(options.get("dry_run")),
            run_id=run_id,
            journal=journal,
            resume=resume,
            events=events,
            progress=progress,
            log=(lambda m: None) if quiet else (lambda m: print(m, file=err, flush=True)),
            masker=masker,
        )
    except (RunError, SettingsError, ValueError) as e:
        err.write(f"{recipe.name}: {e}\n")
        return 2
    try:
        if progress is not None:
            with progress:
                report = runner.run()
        else:
            report = runner.run()
    except KeyboardInterrupt:
        with contextlib.suppress(JournalError):
            journal.end_run(runner.run_id, "interrupted", None, "interrupted by the operator")
        err.write(f"{recipe.name}: interrupted (resume with: wsrun resume {runner.run_id})\n")
        return 130
    except JournalError as e:
        return _journal_failed(journal, runner.run_id, recipe.name, e, err)
    if options.get("json"):
        shown = report.to_json()  # effects and errors: masked by the runner already
        shown["outputs"] = masker.clean(shown["outputs"])
        batch: list[str] = []
        for line in report_json_lines(shown):  # streamed: a million effects are not joined
            batch.append(line)
            if len(batch) >= 4096:
                print("\n".join(batch))
                batch = []
        print("\n".join(batch))
    elif not options.get("quiet"):
        print_report(report, out, verbose=bool(options.get("verbose")))
    if report.status == "failed":
        if options.get("verbose") and report.traceback:
            err.write(report.traceback)
        err.write(f"error: {report.error}\n")
        if not report.dry_run and resumable(report):
            err.write(f"(resume with: wsrun resume {report.run_id})\n")
        return 1
    return 0


def resumable(report: Any) -> bool:
    """Whether ``wsrun resume`` can help a failed run: only when a step changed
    something before the failure (resume keeps that work). A run that failed
    before changing anything (bad input, a refused or duplicate request) gains
    nothing from resuming; it is run again as is."""
    for step in report.steps:  # in execution order; on_failure steps come after
        if step.status == "failed":
            return False
        if step.status == "changed":
            return True
    return False


def _journal_failed(journal: Any, run_id: str, name: str, error: Exception, err: Any) -> int:
    """The journal could not be written mid-run (disk full, read-only): the run
    stopped before its next change; say so in one line and record the end if the
    journal takes that much."""
    import contextlib

    from wsrun.journal import JournalError

    with contextlib.suppress(JournalError):
        journal.end_run(run_id, "failed", None, str(error))
    err.write(
        f"{name}: {error}; the run stopped before its next change"
        f" (wsrun resume {run_id} continues it once the journal can be written)\n"
    )
    return 1
