"""The ``conveyor`` command: the NRAO QA delivery and retrieval tool's command line, run by wsrun.

``conveyor ARGS`` is ``wsrun nrao/conveyor ARGS``: the same options as the tool it
replaces, plus wsrun's own (--dry-run, --json, --profile, ...).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from wsrun.cli.run import run_recipe_command

    return run_recipe_command(
        "nrao/conveyor", list(sys.argv[1:] if argv is None else argv), prog="conveyor"
    )


if __name__ == "__main__":
    raise SystemExit(main())
