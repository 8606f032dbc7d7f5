"""The ``wsrun`` command.

``wsrun RECIPE [recipe options]`` runs a recipe; the other commands (validate,
plan, steps, schema, runs, resume, settings) live in ``wsrun.cli.commands``. This
module imports almost nothing at start-up so ``wsrun --help`` answers at once.
"""

from __future__ import annotations

import sys

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
  db upgrade|status    create or upgrade the SQL tables of the backends
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
        from wsrun.cli import completion

        if head == "__complete":
            return completion.main(args[1:], COMMANDS)
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
        from wsrun.cli.run import run_recipe_command

        return run_recipe_command(args[1], [*args[2:], "--dry-run"], prog=f"wsrun plan {args[1]}")
    if head in COMMANDS:
        from wsrun.cli.commands import run_command

        return run_command(args)
    if head.startswith("-"):
        sys.stderr.write(f"wsrun: unknown option {head}\n\n{HELP}")
        return 2
    from wsrun.cli.run import run_recipe_command

    return run_recipe_command(head, args[1:], prog=f"wsrun {head}")


def script() -> int:
    """``wsrun`` as a command (the console script, ``python -m wsrun``): ``main``,
    then every object left is frozen out of the garbage collector, so that the
    interpreter's shutdown does not walk them all again (a tenth of a second of
    one core once numpy, Pillow or jsonschema are loaded). Handlers registered
    with atexit and threads still end as usual; the memory goes with the process."""
    code = main()
    import gc

    gc.freeze()
    return code
