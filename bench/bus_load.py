#!/usr/bin/env python3
"""Load for the bus benchmark cases of bench/run.py, run as separate processes.

    bus_load.py throughput DB MESSAGES CONSUMERS   one producer, N consumer processes
    bus_load.py latency DB MESSAGES                 publish-to-claim delay, idle consumer
    bus_load.py consume DB NAME                     (a consumer; started by the above)

Each prints one JSON object. Consumers claim and ack until they take a "stop"
message; the producer sends one per consumer after the work, so every work
message is handled before a consumer stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
)

from wsrun.stores.bus.sqlite import SqliteBus  # noqa: E402

QUEUE = "bench"


def consume(db: str, name: str) -> None:
    bus = SqliteBus(db)
    bus.declare_queue(QUEUE, ["bench.*"])
    print("ready", flush=True)
    handled, delays, last = 0, [], 0.0
    while True:
        message = bus.claim(QUEUE, name)
        if message is None:
            bus.wait(QUEUE, 1.0)
            continue
        now = time.time()
        bus.ack(message)
        if message.selector == "bench.stop":
            break
        handled += 1
        last = time.time()
        if "sent" in message.body:
            delays.append(now - message.body["sent"])
    print(json.dumps({"handled": handled, "last": last, "delays": delays}), flush=True)


def start_consumers(db: str, count: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "consume", db, f"c{i}"], stdout=subprocess.PIPE, text=True
        )
        for i in range(count)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def finish(bus: SqliteBus, procs: list[subprocess.Popen[str]]) -> list[dict]:
    for _ in procs:
        bus.publish("bench.stop", {})
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out))
    return results


def throughput(db: str, messages: int, consumers: int) -> None:
    bus = SqliteBus(db)
    procs = start_consumers(db, consumers)
    started = time.time()
    for n in range(messages):
        bus.publish("bench.work", {"n": n})
    published = time.time()
    results = finish(bus, procs)
    handled = sum(r["handled"] for r in results)
    if handled != messages:
        raise SystemExit(f"handled {handled} of {messages} messages")
    ended = max(r["last"] for r in results)
    print(
        json.dumps(
            {
                "seconds": ended - started,
                "publish_seconds": published - started,
                "per_consumer": [r["handled"] for r in results],
            }
        )
    )


def latency(db: str, messages: int) -> None:
    bus = SqliteBus(db)
    procs = start_consumers(db, 1)
    time.sleep(0.2)  # let the consumer go idle: the delay measured includes waking it
    for _ in range(messages):
        bus.publish("bench.ping", {"sent": time.time()})
        time.sleep(0.03)
    delays = sorted(finish(bus, procs)[0]["delays"])
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]  # noqa: E731
    print(json.dumps({"p50": pick(0.5), "p99": pick(0.99), "max": delays[-1], "n": len(delays)}))


if __name__ == "__main__":
    command, db, *rest = sys.argv[1:]
    if command == "consume":
        consume(db, rest[0])
    elif command == "throughput":
        throughput(db, int(rest[0]), int(rest[1]))
    elif command == "latency":
        latency(db, int(rest[0]))
    else:
        raise SystemExit(__doc__)
