"""The message bus: routing, claims across processes, leases, retries, dead
letters, request/reply, latency, and the ``wsrun bus`` commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import write
from wsrun.stores.bus import Bus, BusTimeout, bus_url, matches, open_bus
from wsrun.stores.bus.base import BusError, mask, retry_delay, unconsumed
from wsrun.stores.bus.sqlite import sqlite_path


@pytest.fixture
def bus(bus_backend: str) -> Bus:
    """The bus on each backend (embedded, RabbitMQ), retrying after 0.05 s, 3 attempts."""
    return open_bus(bus_backend)


def is_amqp(bus: Bus) -> bool:
    return bus.url.startswith("amqp")


@pytest.mark.parametrize(
    ("pattern", "selector", "expected"),
    [
        ("cached.*", "cached.EU", True),
        ("cached.*", "cached", False),
        ("cached.*", "cached.EU.x", False),
        ("pipeline.process.EU", "pipeline.process.EU", True),
        ("pipeline.process.EU", "pipeline.process.NA", False),
        ("state.#", "state", True),
        ("state.#", "state.ous.Delivered", True),
        ("#", "anything.at.all", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*.process.#", "pipeline.process", True),
        ("*.*", "one", False),
    ],
)
def test_selector_patterns_follow_rabbitmq_topic_rules(pattern, selector, expected) -> None:
    assert matches(pattern, selector) is expected


def test_publish_copies_the_message_to_every_matching_queue(bus: Bus) -> None:
    bus.declare_queue("eu", ["cached.EU"])
    bus.declare_queue("any-cache", ["cached.*"])
    bus.declare_queue("other", ["pipeline.#"])
    bus.publish("cached.EU", {"name": "weblog.zip"})
    assert bus.counts() == {"any-cache": {"ready": 1}, "eu": {"ready": 1}, "other": {}}
    got = bus.claim("eu", "c1")
    assert got is not None and got.body == {"name": "weblog.zip"} and got.selector == "cached.EU"
    assert json.loads(json.dumps(got.to_json()))["queue"] == "eu"  # no backend handle in it
    assert bus.claim("eu", "c1") is None
    assert bus.claim("other", "c1") is None


def test_bad_selectors_and_patterns_are_refused(bus: Bus) -> None:
    with pytest.raises(BusError, match="no wildcards"):
        bus.publish("cached.*", {})
    with pytest.raises(BusError, match="dotted words"):
        bus.publish("a..b", {})
    with pytest.raises(BusError, match="whole words"):
        bus.declare_queue("q", ["cached.E*"])
    with pytest.raises(BusError, match="JSON object"):
        bus.publish("a.b", [1, 2])  # type: ignore[arg-type]


def test_a_message_nobody_listens_to_yet_waits_for_the_first_matching_queue(bus: Bus) -> None:
    id = bus.publish("pipeline.process.EU", {"ousUID": "uid://X1/X1/Xb2"})
    assert bus.counts() == {"": {"ready": 1}}
    assert bus.get(id).queue == ""
    bus.declare_queue("unrelated", ["cached.*"])
    assert bus.counts()[""] == {"ready": 1}
    bus.declare_queue("driver", ["pipeline.process.*"])
    bus.declare_queue("late", ["pipeline.#"])  # the first matching queue took it
    assert bus.counts() == {"driver": {"ready": 1}, "late": {}, "unrelated": {}}
    message = bus.claim("driver", "w")
    assert message is not None and message.id == id and message.attempts == 1


CONSUMER = """
import os, sys
from wsrun.stores.bus import open_bus
bus = open_bus(sys.argv[1])
name, out, stop = sys.argv[2], open(sys.argv[3], "w"), sys.argv[4]
print("ready", flush=True)
while True:
    m = bus.claim("work", name)
    if m is None:
        if os.path.exists(stop):
            break
        bus.wait("work", 0.2)
        continue
    out.write(m.body["n"].__str__() + "\\n")
    out.flush()
    bus.ack(m)
"""


def test_each_message_is_handled_exactly_once_by_four_consumer_processes(
    tmp_path: Path, bus: Bus
) -> None:
    bus.declare_queue("work", ["job.*"])
    total = 400
    outs = [tmp_path / f"consumer{i}.txt" for i in range(4)]
    stop = tmp_path / "all-handled"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONSUMER, bus.url, f"c{i}", str(out), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    for p in procs:  # no consumer may finish before the producer starts, however slow the machine
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for n in range(total):
        bus.publish("job.run", {"n": n})

    def handled() -> list[int]:
        return [int(line) for out in outs if out.exists() for line in out.read_text().split()]

    # The consumers stop only once every message is handled: an empty claim does not
    # mean an empty queue on RabbitMQ, where a message may still be on its way to a
    # consumer (and goes back to the queue when that consumer leaves).
    deadline = time.monotonic() + 60
    while len(handled()) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.touch()
    for p in procs:
        assert p.wait(timeout=60) == 0
    assert sorted(handled()) == list(range(total))  # none lost, none twice
    assert sum(1 for out in outs if out.read_text()) >= 2  # the work was really shared
    assert unconsumed(bus.counts()) == 0
    assert bus.counts()["work"] == ({} if is_amqp(bus) else {"done": total})


HOLDER = """
import sys, time
from wsrun.stores.bus import open_bus
bus = open_bus(sys.argv[1])
m = bus.claim("work", "doomed", lease=float(sys.argv[2]))
print(m.id, flush=True)
time.sleep(60)
"""


def test_a_killed_consumers_message_is_redelivered(bus: Bus) -> None:
    """Embedded: when the claim's lease runs out. RabbitMQ: when the consumer's
    connection closes, at once."""
    bus.declare_queue("work", ["job.*"])
    id = bus.publish("job.run", {"n": 1})
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, bus.url, "0.5"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == id
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    if not is_amqp(bus):
        assert bus.claim("work", "survivor") is None  # the lease still runs
    assert bus.wait("work", 5.0)  # wakes when the lease ends
    again = bus.claim("work", "survivor")
    assert again is not None and again.id == id and again.attempts == 2
    assert again.consumer == "survivor"


def test_a_message_whose_consumers_keep_dying_is_parked_dead(rabbitmq: str) -> None:
    """RabbitMQ has no lease to run out: a redelivery counts as an attempt, and
    one past the last attempt is parked dead instead of killing the next consumer."""
    from fixtures.rabbitmq import amqp_url

    bus = open_bus(amqp_url(rabbitmq, "max_attempts=1"))
    try:
        bus.declare_queue("work", ["job.*"])
        id = bus.publish("job.run", {"n": 1})
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, bus.url, "60"], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == id
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        bus.wait("work", 5.0)
        assert bus.claim("work", "survivor") is None
        dead = bus.get(id)
        assert dead.status == "dead" and "consumer stopped without finishing" in dead.error
    finally:
        bus.destroy()


def test_a_lease_can_be_renewed_while_the_work_goes_on(bus: Bus) -> None:
    bus.declare_queue("q", ["a.b"])
    bus.publish("a.b", {})
    m = bus.claim("q", "slow", lease=0.3)
    assert m is not None
    for _ in range(3):
        time.sleep(0.15)
        assert bus.extend(m, 0.3)
    assert bus.claim("q", "other") is None
    bus.ack(m)
    assert bus.claim("q", "other") is None and unconsumed(bus.counts()) == 0


def test_failures_are_retried_with_back_off_then_parked_dead_and_resent(bus: Bus) -> None:
    bus.declare_queue("q", ["a.b"])
    id = bus.publish("a.b", {"x": 1})
    m = bus.claim("q", "w")
    for attempt in (1, 2):
        assert m is not None and m.attempts == attempt
        failed = time.time()
        assert bus.fail(m, f"boom {attempt}") == "ready"
        assert m.available - time.time() <= retry_delay(attempt, 0.05)
        m = bus.claim("q", "w")
        if m is None:  # backing off
            assert bus.wait("q", 2.0)
            m = bus.claim("q", "w")
        assert time.time() - failed >= retry_delay(attempt, 0.05) * 0.9
        assert m.error == f"boom {attempt}"
    assert m is not None and m.attempts == 3
    assert bus.fail(m, "boom 3") == "dead"
    dead = bus.get(id)
    assert dead.status == "dead" and dead.error == "boom 3"
    assert bus.claim("q", "w") is None
    assert [d.id for d in bus.messages(status="dead")] == [id]
    resent = bus.resend(id)
    assert resent.status == "ready" and resent.attempts == 0
    assert bus.claim("q", "w").id == id
    with pytest.raises(BusError, match="only dead or done|no dead message"):
        bus.resend(id)


def test_an_invalid_message_can_be_parked_dead_at_once(bus: Bus) -> None:
    bus.declare_queue("q", ["a.b"])
    bus.publish("a.b", {"bad": True})
    m = bus.claim("q", "w")
    assert bus.fail(m, "input 'x' is required", retry=False) == "dead"
    assert bus.get(m.id).attempts == 1
    assert bus.counts()["q"] == {"dead": 1} and unconsumed(bus.counts()) == 1


def test_release_returns_a_claim_without_counting_the_attempt(bus: Bus) -> None:
    bus.declare_queue("q", ["a.b"])
    bus.publish("a.b", {})
    m = bus.claim("q", "w")
    bus.release(m)
    # the released copy is back once the broker has routed it: wait for it, as a worker does
    assert bus.wait("q", 10)
    again = bus.claim("q", "w2")
    assert again is not None and again.id == m.id and again.attempts == 1


def _responder(bus: Bus, stop: threading.Event) -> None:
    while not stop.is_set():
        m = bus.claim("xtss", "server")
        if m is None:
            bus.wait("xtss", 0.1)
            continue
        bus.reply(m, {"state": "Processing", "for": m.body["ousUID"]})
        bus.ack(m)


def test_call_gets_the_reply_and_times_out_without_one(bus: Bus) -> None:
    bus.declare_queue("xtss", ["xtss"])
    stop = threading.Event()
    server = threading.Thread(target=_responder, args=(bus, stop))
    server.start()
    try:
        reply = bus.call("xtss", {"ousUID": "uid://X1/X1/Xb2"}, timeout=5)
        assert reply == {"state": "Processing", "for": "uid://X1/X1/Xb2"}
    finally:
        stop.set()
        server.join()
    started = time.monotonic()
    with pytest.raises(BusTimeout, match="no reply to xtss within 0.3 s"):
        bus.call("xtss", {"ousUID": "uid://X1/X1/Xb3"}, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert not [q for q in bus.queues() if q.startswith("reply.")]  # reply queues removed


def test_publish_to_handler_latency_is_small(bus: Bus) -> None:
    """A smoke test with generous bounds; bench/run.py measures the real figures."""
    bus.declare_queue("q", ["lat.x"])
    seen: list[float] = []

    def consume() -> None:
        while len(seen) < 30:
            m = bus.claim("q", "c")
            if m is None:
                bus.wait("q", 1.0)
                continue
            seen.append(time.time() - m.body["sent"])
            bus.ack(m)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for _ in range(30):
        time.sleep(0.02)
        bus.publish("lat.x", {"sent": time.time()})
    consumer.join(timeout=30)
    seen.sort()
    assert len(seen) == 30
    assert seen[len(seen) // 2] < 0.1 and seen[-1] < 0.5, seen


def test_urls_choose_the_file_and_the_retry_policy(tmp_path: Path, monkeypatch) -> None:
    assert sqlite_path("sqlite:///tmp/x/bus.db") == "/tmp/x/bus.db"
    assert sqlite_path("sqlite:////tmp/x/bus.db") == "/tmp/x/bus.db"
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite://rel/bus.db") == str(tmp_path / "rel" / "bus.db")
    url = f"sqlite:///{tmp_path}/b.db?max_attempts=2&backoff=0.5"
    b = open_bus(url)
    assert (b.max_attempts, b.backoff) == (2, 0.5) and open_bus(url) is b
    home = os.environ["WSRUN_HOME"]
    assert sqlite_path(bus_url(env={"WSRUN_HOME": home})) == os.path.join(home, "bus.db")
    assert bus_url(env={"WSRUN_BUS_URL": "sqlite:///a.db"}) == "sqlite:///a.db"
    assert bus_url("sqlite:///b.db", env={"WSRUN_BUS_URL": "sqlite:///a.db"}) == "sqlite:///b.db"
    assert bus_url(env={}, overrides={"wsrun.bus.url": "sqlite:///c.db"}) == "sqlite:///c.db"
    with pytest.raises(BusError, match="unknown bus URL"):
        open_bus("nats://x")


def test_bus_commands_send_list_show_resend_and_count(cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db?max_attempts=1"
    sent = cli("bus", "send", "pipeline.process.EU", '{"ousUID": "uid://X1/X1/Xb2"}', "--bus", url)
    assert sent.code == 0, sent.err
    id = sent.out.strip()
    listed = cli("bus", "ls", "--json", "--bus", url)
    assert [m["id"] for m in json.loads(listed.out)] == [id]
    assert "(unrouted)" in cli("bus", "queues", "--bus", url).out
    bus = open_bus(url)
    bus.declare_queue("driver", ["pipeline.process.*"])
    bus.fail(bus.claim("driver", "w"), "no such OUS")
    shown = cli("bus", "show", id[:8], "--bus", url)
    assert "status dead" in shown.out and "error: no such OUS" in shown.out
    assert "uid://X1/X1/Xb2" in shown.out
    dead = cli("bus", "ls", "--status", "dead", "--queue", "driver", "--bus", url)
    assert id in dead.out and "no such OUS" in dead.out
    queues = cli("bus", "queues", "--json", "--bus", url)
    assert json.loads(queues.out)["driver"] == {
        "patterns": ["pipeline.process.*"],
        "counts": {"dead": 1},
    }
    assert cli("bus", "resend", id, "--bus", url).code == 0
    assert bus.get(id).status == "ready"
    assert cli("bus", "resend", id, "--bus", url).code == 2
    assert cli("bus", "show", "nope", "--bus", url).code == 2
    bad = cli("bus", "send", "a.b", "[1]", "--bus", url)
    assert bad.code == 2 and "JSON object" in bad.err
    timed_out = cli("bus", "call", "nobody.home", "{}", "--timeout", "0.2", "--bus", url)
    assert timed_out.code == 1 and "no reply" in timed_out.err


def test_bus_commands_print_json_too(cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db?max_attempts=1"
    sent = json.loads(cli("bus", "send", "a.b", '{"n": 1}', "--bus", url, "--json").out)
    assert sent["selector"] == "a.b"
    bus = open_bus(url)
    assert bus.get(sent["id"]).body == {"n": 1}
    bus.declare_queue("q", ["a.*"])
    bus.fail(bus.claim("q", "w"), "broken")
    again = json.loads(cli("bus", "resend", sent["id"], "--bus", url, "--json").out)
    assert again["id"] == sent["id"] and again["status"] == "ready"
    bus.ack(bus.claim("q", "w"))
    purged = cli("bus", "purge", "--bus", url, "--json")
    assert json.loads(purged.out) == {"removed": 1, "status": "done"}
    assert cli("bus", "send", "a.b", "--bus", url, "-q").out == ""


def test_publish_and_call_steps_send_only_in_a_real_run(cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/steps.db"
    bus = open_bus(url)
    bus.declare_queue("reports", ["pipeline.report.*"])
    recipe = write(
        tmp_path / "send.yaml",
        f"""
        recipe: send
        inputs:
          ous: {{type: string, default: "uid://X1/X1/Xb2"}}
        steps:
          - id: report
            uses: publish
            with:
              selector: pipeline.report.JAO
              body: {{ousUID: "{{{{ inputs.ous }}}}", source: EU}}
              headers: {{by: test}}
              bus: "{url}"
        outputs:
          id: "{{{{ steps.report.outputs.id }}}}"
        """,
    )
    dry = cli(recipe, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    effects = json.loads(dry.out)["steps"][0]["effects"]
    assert effects == [{"op": "publish", "path": "pipeline.report.JAO"}]
    assert bus.counts()["reports"] == {}
    real = cli(recipe, "--json")
    assert real.code == 0, real.err
    report = json.loads(real.out)
    assert report["steps"][0]["effects"] == effects
    message = bus.get(report["outputs"]["id"])
    assert message.body == {"ousUID": "uid://X1/X1/Xb2", "source": "EU"}
    assert message.headers == {"by": "test"}


def test_state_changes_are_relayed_once_with_their_fields(bus: Bus) -> None:
    from wsrun.stores.bus.events import relay_state_changes
    from wsrun.stores.state import open_state_store

    store = open_state_store()
    store.transition("ous", "X0", state="Verified", create=True)
    assert relay_state_changes(store, bus, "relay-0") == 1
    assert bus.counts() == {}  # nobody subscribed: dropped, not kept unrouted
    bus.declare_queue("tracker", ["state.ous.*"])
    store.transition("ous", "X1", state="Verified", create=True)
    store.transition("ous", "X1", state="DeliveryInProgress", substate="IngestionTriggered")
    assert relay_state_changes(store, bus, "relay-1") == 2
    assert relay_state_changes(store, bus, "relay-2") == 0  # published once only
    got = [bus.claim("tracker", "t"), bus.claim("tracker", "t")]
    assert bus.claim("tracker", "t") is None  # the change before the queue was not kept
    assert [m.selector for m in got] == ["state.ous.Verified", "state.ous.DeliveryInProgress"]
    bodies = [m.body for m in got]
    last = bodies[1]
    assert {k: last[k] for k in ("kind", "id", "state", "substate", "from_state")} == {
        "kind": "ous",
        "id": "X1",
        "state": "DeliveryInProgress",
        "substate": "IngestionTriggered",
        "from_state": "Verified",
    }
    assert set(last) == {
        "kind",
        "id",
        "state",
        "substate",
        "from_state",
        "from_substate",
        "attributes",
        "seq",
        "at",
    }
    assert bodies[0]["seq"] < last["seq"]


def test_unrouted_messages_are_kept_unless_told_otherwise(bus: Bus) -> None:
    kept = bus.publish("pipeline.process.EU", {"n": 1})
    bus.publish("pipeline.process.EU", {"n": 2}, keep_unrouted=False)
    assert bus.counts() == {"": {"ready": 1}} and unconsumed(bus.counts()) == 1
    assert [m.id for m in bus.messages(queue="")] == [kept]
    bus.declare_queue("driver", ["pipeline.#"])
    assert bus.claim("driver", "w").body == {"n": 1}
    assert bus.claim("driver", "w") is None


def test_purge_removes_old_messages_of_a_status(bus: Bus, cli) -> None:
    bus.declare_queue("q", ["a.b"])
    for n in range(3):
        bus.publish("a.b", {"n": n})
    for status in ("done", "dead"):
        m = bus.claim("q", "w")
        bus.ack(m) if status == "done" else bus.fail(m, "bad", retry=False)
    bus.publish("nobody.home", {})
    url = bus.url
    assert (
        cli("bus", "purge", "--older-than", "1d", "--bus", url).out == "0 done messages removed\n"
    )
    done = cli("bus", "purge", "--bus", url)
    assert done.out == ("0 done messages removed\n" if is_amqp(bus) else "1 done message removed\n")
    assert cli("bus", "purge", "--status", "dead", "--bus", url).out.startswith("1 dead message ")
    unrouted = cli("bus", "purge", "--status", "ready", "--queue", "", "--bus", url)
    assert unrouted.out == "1 ready message removed\n"
    assert bus.counts() == {"q": {"ready": 1}}
    refused = cli("bus", "purge", "--status", "claimed", "--bus", url)
    assert refused.code == 2 and "cannot purge 'claimed'" in refused.err
    assert cli("bus", "purge", "--older-than", "soon", "--bus", url).code == 2


def test_done_messages_past_the_retention_are_removed(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path}/kept.db?retention=0.2s")
    assert bus.retention == 0.2
    bus.declare_queue("q", ["a.b"])
    first = bus.publish("a.b", {})
    bus.ack(bus.claim("q", "w"))
    assert bus.counts()["q"] == {"done": 1}  # younger than the retention: kept
    time.sleep(0.3)
    second = bus.publish("a.b", {})
    bus._next_prune = 0.0  # the next ack looks again (once a minute otherwise)
    bus.ack(bus.claim("q", "w"))
    assert [m.id for m in bus.messages(queue="q")] == [second]
    assert bus.get(first) is None
    with pytest.raises(BusError, match="invalid duration"):
        open_bus(f"sqlite:///{tmp_path}/x.db?retention=forever")


def test_the_rabbitmq_password_never_shows(rabbitmq: str, tmp_path: Path, cli) -> None:
    from fixtures.rabbitmq import amqp_url

    assert mask("amqp://wsrun:s3cret@mq:5672/%2F") == "amqp://wsrun:****@mq:5672/%2F"
    wrong = amqp_url(rabbitmq.replace(":guest@", ":s3cret-pw@"))
    with pytest.raises(BusError) as refused:
        open_bus(wrong)
    assert "s3cret-pw" not in str(refused.value) and "****" in str(refused.value)
    assert "login refused" in str(refused.value)
    sent = cli("bus", "send", "a.b", "{}", "--bus", wrong)
    assert sent.code == 2 and "s3cret-pw" not in sent.err + sent.out
    url = amqp_url(rabbitmq)
    password = urlsplit(url).password
    try:
        write(tmp_path / "noop.yaml", "recipe: noop\non: {message: a.b}\nsteps: [{uses: noop}]\n")
        log = tmp_path / "worker.log"
        with open(log, "w") as err:
            worker = subprocess.Popen(
                [sys.executable, "-m", "wsrun", "worker", "noop.yaml", "--bus", url],
                cwd=tmp_path,
                stderr=err,
            )
        deadline = time.monotonic() + 20
        while "listening:" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        open_bus(url).publish("a.b", {})
        while "message" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        text = log.read_text()
        assert "bus amqp://guest:****@127.0.0.1" in text and f":{password}@" not in text
        shown = cli("bus", "queues", "--bus", url)
        assert shown.code == 0 and f":{password}@" not in shown.out + shown.err
        assert "noop:a.b" in shown.out
    finally:
        from wsrun.stores.bus.amqp import AmqpBus

        AmqpBus(url).destroy()
