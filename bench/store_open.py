#!/usr/bin/env python3
"""What opening an embedded store costs: the schema check every open makes.

    store_open.py [ROUNDS]          figures for the wsrun in this checkout
    PYTHONPATH=/other/engine store_open.py --here=no [ROUNDS]
                                    the same for another wsrun (e.g. an older commit
                                    unpacked with `git archive`), to compare

For each SQLite store (state, journal, archive, bus) it times a first open of a
new file (which creates and migrates it) and a re-open of an existing, current
file (which only checks the schema), ROUNDS times each, and prints one JSON
object: milliseconds per open (median), with the load average. Opening is what
every `wsrun` command, worker poll loop thread and web request that touches a
store pays, so the check must stay cheap.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

if "--here=no" not in sys.argv:
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
    )


def _openers() -> dict[str, Callable[[str], Any]]:
    from wsrun.core.journal import Journal
    from wsrun.stores.archive.store import ArchiveStore
    from wsrun.stores.bus.sqlite import SqliteBus
    from wsrun.stores.state import open_state_store

    def state(path: str) -> Any:
        store = open_state_store("sqlite://" + path)
        store.get("x", "y")  # a read opens the file (a store is opened lazily)
        return store

    def journal(path: str) -> Any:
        return Journal(url="sqlite://" + path)

    def archive(path: str) -> Any:
        return ArchiveStore.open(os.path.dirname(path))

    def bus(path: str) -> Any:
        return SqliteBus(path)

    return {"state": state, "journal": journal, "archive": archive, "bus": bus}


def _ms(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    found = action()
    elapsed = (time.perf_counter() - start) * 1000
    found.close()
    return elapsed


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = int(args[0]) if args else 50
    import wsrun

    report: dict[str, Any] = {"rounds": rounds, "wsrun": os.path.dirname(wsrun.__file__)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, opener in _openers().items():
            first, again = [], []
            for i in range(rounds):
                folder = os.path.join(tmp, f"{name}-{i}")
                os.makedirs(folder)
                path = os.path.join(folder, "archive.db" if name == "archive" else "s.db")
                if name == "state":  # a state file is made by its first write
                    from wsrun.stores.state import open_state_store

                    def make(p: str = path) -> Any:
                        store = open_state_store("sqlite://" + p)
                        store.transition("x", "y", state="a", create=True)
                        return store

                    first.append(_ms(make))
                else:
                    first.append(_ms(lambda p=path, o=opener: o(p)))
                again.append(_ms(lambda p=path, o=opener: o(p)))
            report[name] = {
                "first_open_ms": round(statistics.median(first), 3),
                "reopen_ms": round(statistics.median(again), 3),
            }
    with open("/proc/loadavg") as f:
        report["loadavg"] = f.read().split()[:3]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
