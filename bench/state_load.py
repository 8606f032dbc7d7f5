#!/usr/bin/env python3
"""Load for the state-store benchmark cases of bench/run.py.

    state_load.py URL WORKERS OUS_PER_WORKER

WORKERS processes (started first and connected, so their start-up is not
timed) each create OUS_PER_WORKER OUSs and move each along the whole OUS
lifecycle, ReadyForProcessing to Delivered (7 transitions, each checked
against the registered lifecycle, with history). Prints one JSON object:
the transitions made, the seconds from the common start to the last one
finishing, and transitions per second. Afterwards it checks every OUS is
Delivered with its 7 history rows.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sys
import time
from typing import Any

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
)

from wsrun.stores.state import load_lifecycle, open_state_store  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIFECYCLE = os.path.join(REPO, "engine", "wsrun", "packs", "alma", "recipes", "ous-lifecycle.yaml")
HAPPY_PATH = [
    "ReadyForProcessing",
    "Processing",
    "ReadyForReview",
    "Reviewing",
    "Verified",
    "DeliveryInProgress",
    "Delivered",
]


def work(url: str, worker: int, count: int, ready: Any, start: Any, done: Any) -> None:
    """Move this worker's OUSs along the lifecycle once ``start`` is set."""
    store = open_state_store(url)
    store.get("ous", "warm-up")  # connect before the clock starts
    ready.release()
    start.wait()
    for i in range(count):
        ous = f"uid://bench/{worker}/{i}"
        store.transition("ous", ous, state=HAPPY_PATH[0], create=True, actor="bench")
        for before, after in zip(HAPPY_PATH, HAPPY_PATH[1:], strict=False):
            store.transition("ous", ous, state=after, expect_state=before, actor="bench")
    done.put(time.monotonic())
    store.close()


def main(url: str, workers: int, count: int) -> dict[str, Any]:
    store = open_state_store(url)
    store.register_lifecycle(load_lifecycle(LIFECYCLE))
    context = multiprocessing.get_context("spawn")
    ready, start, done = context.Semaphore(0), context.Event(), context.Queue()
    procs = [
        context.Process(target=work, args=(url, w, count, ready, start, done))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    started = time.monotonic()
    start.set()
    ends: list[float] = []
    while len(ends) < len(procs):
        try:
            ends.append(done.get(timeout=0.5))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode]
            if failed:
                for p in procs:
                    p.terminate()
                raise SystemExit(f"a worker failed (exit {failed[0]})") from None
    for p in procs:
        p.join()
    seconds = max(ends) - started
    transitions = workers * count * len(HAPPY_PATH)
    delivered = store.count(kind="ous", state="Delivered")
    histories = {
        len(store.history("ous", f"uid://bench/{w}/{i}"))
        for w in range(workers)
        for i in range(count)
    }
    if delivered != workers * count or histories != {len(HAPPY_PATH)}:
        raise SystemExit(
            f"{delivered} OUSs Delivered of {workers * count}; history lengths {histories}"
        )
    store.close()
    return {"transitions": transitions, "seconds": seconds, "per_second": transitions / seconds}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
