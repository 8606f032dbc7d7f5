"""Running one recipe from the command line: its own options, the run, what is printed.

``wsrun RECIPE``, ``wsrun plan``, ``wsrun resume`` and the tools' console scripts
(``deliver``, ``conveyor``, ``ingest_envoy``) all come here.
"""

from __future__ import annotations

import sys
from typing import Any


def run_recipe_command(ref: str, args: list[str], prog: str) -> int:
    """Parse a recipe's own command line and run it; the exit status."""
    from wsrun.core.recipe import RecipeNotFound, resolve
    from wsrun.core.validate import InvalidRecipe, load_valid

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
    from wsrun.cli.recipe_args import build_parser, split_namespace

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

    from wsrun.cli.recipe_args import parse_sets
    from wsrun.core import extras
    from wsrun.core.journal import Journal, JournalError
    from wsrun.core.masking import MaskedStream, Masker
    from wsrun.core.output import (
        LineEvents,
        RichProgress,
    )
    from wsrun.core.runner import Events, RunError, Runner, coerce_inputs
    from wsrun.core.settings import Settings, SettingsError
    from wsrun.stores.preflight import preflight

    masker = Masker()
    out, err = MaskedStream(sys.stdout, masker), MaskedStream(sys.stderr, masker)
    try:
        settings = Settings(
            profile=options.get("profile"), overrides=parse_sets(options.get("set") or [])
        )
        inputs = coerce_inputs(recipe, inputs, os.getcwd())
        quiet = options.get("quiet") or options.get("json")
        progress = display_progress(bool(quiet), settings, err)
        bars = progress if isinstance(progress, RichProgress) else None
        events: Events = Events() if quiet else LineEvents(err, bool(options.get("dry_run")), bars)
        preflight(recipe)
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
    except (RunError, SettingsError, ValueError, extras.MissingExtra) as e:
        err.write(f"{recipe.name}: {e}\n")
        return 2
    try:
        return _run_and_report(runner, journal, recipe.name, bars, options, masker, out, err)
    finally:
        # Closed, not left to the collector (the command freezes what is left at
        # exit): SQLite then folds its write-ahead log into journal.db and
        # removes it, where an open connection left it as big as the run's records.
        with contextlib.suppress(JournalError):
            journal.close()


def _run_and_report(
    runner: Any,
    journal: Any,
    name: str,
    bars: Any,
    options: dict[str, Any],
    masker: Any,
    out: Any,
    err: Any,
) -> int:
    """Run, then print the report (as JSON, or for people); the exit code."""
    import contextlib

    from wsrun.core.journal import JournalError
    from wsrun.core.output import print_report, report_json_lines

    try:
        if bars is not None:
            with bars:
                report = runner.run()
        else:
            report = runner.run()
    except KeyboardInterrupt:
        with contextlib.suppress(JournalError):
            journal.end_run(runner.run_id, "interrupted", None, "interrupted by the operator")
        err.write(f"{name}: interrupted (resume with: wsrun resume {runner.run_id})\n")
        return 130
    except JournalError as e:
        return _journal_failed(journal, runner.run_id, name, e, err)
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


def display_progress(quiet: bool, settings: Any, err: Any) -> Any:
    """How a run shows its long steps: nothing with -q or --json (stdout stays
    the JSON alone); a live line per step on a terminal; otherwise (logs,
    pipes) a heartbeat line on stderr every few seconds."""
    from wsrun.core.output import RichProgress, stream_is_terminal
    from wsrun.core.progress import Heartbeat, heartbeat_interval

    if quiet:
        return None
    if stream_is_terminal(sys.stderr):
        return RichProgress()
    interval = heartbeat_interval(settings)
    return None if interval is None else Heartbeat(err, interval)


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

    from wsrun.core.journal import JournalError

    with contextlib.suppress(JournalError):
        journal.end_run(run_id, "failed", None, str(error))
    err.write(
        f"{name}: {error}; the run stopped before its next change"
        f" (wsrun resume {run_id} continues it once the journal can be written)\n"
    )
    return 1
