"""The ``wsrun worker`` command (the work itself is in ``wsrun.worker.service``)."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Annotated, Any

import typer

#: The worker's lines that report a failure (a failed run or message, one parked dead,
#: a store it cannot reach): the only ones ``--quiet`` keeps.
PROBLEM = re.compile(r"\bfailed\b|\bparked dead\b")


def worker(
    recipes: Annotated[
        list[str], typer.Argument(help="Recipes with 'on:' triggers, or folders of them")
    ],
    concurrency: Annotated[
        int, typer.Option(help="Runs of each recipe at the same time", min=1)
    ] = 1,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="KEY=VALUE: an input of the recipes (for their selectors) or a setting"
        ),
    ] = None,
    bus: Annotated[
        str | None, typer.Option(help="Bus URL (default: $WSRUN_BUS_URL, setting, $WSRUN_HOME)")
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(help="State store URL (default: $WSRUN_STATE_URL, setting, $WSRUN_HOME)"),
    ] = None,
    lease: Annotated[
        float,
        typer.Option(
            help="Seconds a claim lasts unless renewed (a dead worker's work returns after it)"
        ),
    ] = 60.0,
    profile: Annotated[str | None, typer.Option(help="Settings profile")] = None,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Log only failures (runs and messages)")
    ] = False,
) -> None:
    """Run recipes when a message arrives, a state changes or a file appears, until SIGTERM/SIGINT."""
    from wsrun.cli.recipe_args import parse_sets
    from wsrun.core.settings import Settings, SettingsError
    from wsrun.core.validate import InvalidRecipe
    from wsrun.stores.bus import BusError, bus_url, open_bus
    from wsrun.stores.bus.base import mask
    from wsrun.worker.service import Worker, WorkerError, build_triggers, find_recipes

    def log(line: str) -> None:
        if quiet and not PROBLEM.search(line):
            return
        print(f"wsrun worker: {line}", file=sys.stderr, flush=True)

    try:
        sets = parse_sets(set_ or [])
        settings = Settings(profile=profile, overrides=sets)
        triggers = build_triggers(find_recipes(recipes), sets)
        the_bus = open_bus(bus_url(bus, overrides=sets))
        relay = bool(state) or any(t.kind == "state" for t in triggers)
        state_url = state or sets.get("wsrun.state.url")
        w = Worker(
            triggers,
            the_bus,
            settings,
            concurrency=concurrency,
            lease=lease,
            state_url=state_url,
            relay=relay,
            log=log,
        )
    except InvalidRecipe as e:
        print(str(e), file=sys.stderr)
        raise typer.Exit(2) from None
    except (WorkerError, BusError, SettingsError, ValueError) as e:
        print(f"wsrun worker: {e}", file=sys.stderr)
        raise typer.Exit(2) from None

    def on_signal(signum: int, frame: Any) -> None:
        if w.stopping.is_set():
            log("stopping now; unfinished messages return to their queues when their lease ends")
            os._exit(128 + signum)
        log(
            f"{signal.Signals(signum).name}: finishing the runs in progress (again to stop at once)"
        )
        w.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"started (pid {os.getpid()}, bus {mask(the_bus.url)}, concurrency {concurrency})")
    try:
        w.run()
    except WorkerError as e:
        print(f"wsrun worker: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    log(f"stopped after {w.handled} message(s)")
