"""The ``deliver`` command: the NRAO delivery tool's command line, run by wsrun.

``deliver ARGS`` is ``wsrun nrao/deliver ARGS``: the same options as the tool it
replaces, plus wsrun's own (--dry-run, --json, --profile, ...).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from wsrun.cli.run import run_recipe_command

    return run_recipe_command(
        "nrao/deliver", list(sys.argv[1:] if argv is None else argv), prog="deliver"
    )


if __name__ == "__main__":
    raise SystemExit(main())
