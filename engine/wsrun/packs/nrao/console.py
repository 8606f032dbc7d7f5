"""The NRAO tools' own commands, each its packaged recipe run by wsrun with the exact
options of the tool it replaces, plus wsrun's own (--dry-run, --json, --profile, ...):

- ``deliver ARGS`` is ``wsrun nrao/deliver ARGS``;
- ``conveyor ARGS`` is ``wsrun nrao/conveyor ARGS``;
- ``ingest_envoy ARGS`` is ``wsrun nrao/ingest_envoy ARGS``, which takes exactly one of
  --calibration, --image, --observation, --seci.
"""

from __future__ import annotations

import sys

INGEST_OPTIONS = ("--calibration", "--image", "--observation", "--seci")


def _run(tool: str, argv: list[str] | None) -> int:
    from wsrun.cli.run import run_recipe_command

    return run_recipe_command(
        f"nrao/{tool}", list(sys.argv[1:] if argv is None else argv), prog=tool
    )


def deliver(argv: list[str] | None = None) -> int:
    return _run("deliver", argv)


def conveyor(argv: list[str] | None = None) -> int:
    return _run("conveyor", argv)


def ingest_envoy(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    given = [a for a in args if a.split("=")[0] in INGEST_OPTIONS]
    if len(given) != 1 and not {"-h", "--help"} & set(args):
        sys.stderr.write(
            f"ingest_envoy: give exactly one of {', '.join(INGEST_OPTIONS)} (see --help)\n"
        )
        return 2
    return _run("ingest_envoy", args)
