"""The ``ingest_envoy`` command: NRAO's ingestion launcher, run by wsrun.

``ingest_envoy ARGS`` is ``wsrun nrao/ingest_envoy ARGS``: the same options as
the tool it replaces (exactly one of --calibration, --image, --observation,
--seci), plus wsrun's own (--dry-run, --json, --profile, ...).
"""

from __future__ import annotations

import sys

OPTIONS = ("--calibration", "--image", "--observation", "--seci")


def main(argv: list[str] | None = None) -> int:
    from wsrun.cli.run import run_recipe_command

    args = list(sys.argv[1:] if argv is None else argv)
    given = [a for a in args if a.split("=")[0] in OPTIONS]
    if len(given) != 1 and not {"-h", "--help"} & set(args):
        sys.stderr.write(f"ingest_envoy: give exactly one of {', '.join(OPTIONS)} (see --help)\n")
        return 2
    return run_recipe_command("nrao/ingest_envoy", args, prog="ingest_envoy")


if __name__ == "__main__":
    raise SystemExit(main())
