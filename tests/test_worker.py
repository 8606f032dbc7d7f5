"""``wsrun worker`` end to end, as an operator runs it: a separate process fed
through ``wsrun bus`` and the state store, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from conftest import run_wsrun, write
from wsrun.stores.bus import open_bus
from wsrun.stores.bus.base import unconsumed


def waiting(queue: str) -> dict[str, int]:
    """The queue's counts without ``done`` (RabbitMQ keeps no handled messages)."""
    counts = open_bus().counts().get(queue, {})
    return {status: n for status, n in counts.items() if status != "done"}


class WorkerProcess:
    """A ``wsrun worker`` subprocess whose log goes to a file the test reads."""

    def __init__(self, cwd: Path, args: tuple[str, ...], log: Path) -> None:
        self.log = log
        with open(log, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wsrun", "worker", *args],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 20) -> None:
        until(lambda: text in self.text(), timeout, f"worker log to show {text!r}")

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def until(check: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, ready: bool = True) -> WorkerProcess:
        w = WorkerProcess(tmp_path, args, tmp_path / f"worker{len(started)}.log")
        started.append(w)
        if ready:
            w.wait_for("listening:")
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


HELLO = """
recipe: hello
on: {message: "hello.{{ inputs.site }}"}
inputs:
  site: {type: string}
  name: {type: string, required: true, from_message: true}
  count: {type: int, default: 1, from_message: true}
steps:
  - uses: template
    with:
      to: "out/{{ inputs.name }}.txt"
      content: "{{ name }} x{{ count }} at {{ site }} via {{ via }}"
      vars:
        name: "{{ inputs.name }}"
        count: "{{ inputs.count }}"
        site: "{{ inputs.site }}"
        via: "{{ message.selector if message else 'hand' }}"
"""


def test_a_message_runs_its_recipe_and_a_bad_body_is_parked_dead(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    recipe = write(tmp_path / "hello.yaml", HELLO)
    (tmp_path / "out").mkdir()
    early = run_wsrun("bus", "send", "hello.EU", '{"name": "ann"}', cwd=tmp_path)
    assert early.code == 0, early.err  # sent before any worker listens: kept
    worker = start_worker(str(recipe), "--set", "site=EU", "--concurrency", "2")
    bus = open_bus()
    bus.publish("hello.EU", {"name": "bob", "count": 3})
    bus.publish("hello.NA", {"name": "nobody"})  # not ours
    bad = bus.publish("hello.EU", {"name": "cy", "count": "many"})
    unknown = bus.publish("hello.EU", {"nom": "dee"})
    until(lambda: (tmp_path / "out" / "bob.txt").exists(), what="bob.txt")
    until(lambda: bus.counts()["hello:hello.EU"].get("dead") == 2, what="two dead messages")
    assert (tmp_path / "out" / "ann.txt").read_text() == "ann x1 at EU via hello.EU"
    assert (tmp_path / "out" / "bob.txt").read_text() == "bob x3 at EU via hello.EU"
    assert bus.get(bad).error == (
        "invalid message for hello: input 'count': 'many' is not a whole number"
        " (message bodies are JSON)"
    )
    assert bus.get(unknown).error == (
        "invalid message for hello: the body may not set nom (a message may carry name, count)"
    )
    assert worker.stop() == 0
    assert waiting("hello:hello.EU") == {"dead": 2} and bus.counts()[""] == {"ready": 1}
    if bus_backend.startswith("sqlite"):
        assert bus.counts()["hello:hello.EU"] == {"done": 2, "dead": 2}
    assert "stopped after 4 message(s)" in worker.text()
    runs = json.loads(run_wsrun("runs", "--json", cwd=tmp_path).out)
    assert sorted(r["inputs"]["name"] for r in runs) == ["ann", "bob"]
    by_hand = run_wsrun(recipe, "--name", "eve", "--site", "XX", cwd=tmp_path)
    assert by_hand.code == 0, by_hand.err
    assert (tmp_path / "out" / "eve.txt").read_text() == "eve x1 at XX via hand"


def test_quiet_worker_logs_only_failures(tmp_path: Path, start_worker) -> None:
    recipe = write(tmp_path / "hello.yaml", HELLO)
    (tmp_path / "out").mkdir()
    worker = start_worker(str(recipe), "--set", "site=EU", "-q", ready=False)
    bus = open_bus()
    bus.publish("hello.EU", {"name": "bob"})
    bad = bus.publish("hello.EU", {"name": "cy", "count": "many"})
    until(lambda: (tmp_path / "out" / "bob.txt").exists(), what="bob.txt")
    worker.wait_for(f"message {bad} parked dead")
    assert worker.stop() == 0
    assert len(worker.text().splitlines()) == 1, worker.text()


def test_a_failing_run_is_retried_then_parked_dead_and_can_be_resent(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    url = bus_backend.replace("max_attempts=3&backoff=0.05", "max_attempts=2&backoff=0.2")
    write(
        tmp_path / "flaky.yaml",
        """
        recipe: flaky
        on: {message: flaky.run}
        inputs:
          marker: {type: path, from_message: true, within: .}
        steps:
          - uses: shell
            with: {argv: [sh, -c, 'echo x >> tries; test -e "$0" || exit 75', "{{ inputs.marker }}"]}
        """,
    )
    worker = start_worker("flaky.yaml", "--bus", url)
    bus = open_bus(url)
    id = bus.publish("flaky.run", {"marker": "ok-now"})
    until(lambda: getattr(bus.get(id), "status", None) == "dead", what="the message to go dead")
    dead = bus.get(id)
    assert dead.attempts == 2 and "sh exited with code 75" in dead.error
    assert (tmp_path / "tries").read_text() == "x\nx\n"
    (tmp_path / "ok-now").touch()
    assert run_wsrun("bus", "resend", id, "--bus", url, cwd=tmp_path).code == 0
    until(lambda: (tmp_path / "tries").read_text() == "x\nx\nx\n", what="the resent run")
    until(lambda: unconsumed(bus.counts()) == 0, what="the resent message to be handled")
    assert worker.stop() == 0


def test_a_recipe_answers_a_call_from_another_recipe(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    write(
        tmp_path / "xtss.yaml",
        """
        recipe: xtss
        on: {message: xtss}
        inputs:
          operation: {type: string, from_message: true}
          ousUID: {type: string, from_message: true}
        steps:
          - uses: reply
            with:
              message: "{{ message }}"
              body: {done: "{{ inputs.operation }}", ous: "{{ inputs.ousUID }}"}
        """,
    )
    caller = write(
        tmp_path / "ask.yaml",
        """
        recipe: ask
        steps:
          - id: ask
            uses: call
            with:
              selector: xtss
              body: {operation: get-state, ousUID: "uid://X1/X1/Xb2"}
              timeout: 20
        outputs:
          reply: "{{ steps.ask.outputs.reply }}"
        """,
    )
    write(
        tmp_path / "asker.yaml",
        """
        recipe: asker
        on: {message: ask.go}
        inputs:
          ous: {type: string, from_message: true}
        steps:
          - id: ask
            uses: call
            with: {selector: xtss, body: {operation: get, ousUID: "{{ inputs.ous }}"}, timeout: 20}
          - uses: shell
            with: {argv: [sh, -c, 'echo "$0" > asked', "{{ steps.ask.outputs.reply.ous }}"]}
        """,
    )
    # one run of each recipe at a time: the asker waiting for its answer does
    # not take the slot the xtss recipe needs to give it
    worker = start_worker("xtss.yaml", "asker.yaml", "--concurrency", "1")
    open_bus().publish("ask.go", {"ous": "uid://X1/X1/Xb9"})
    until(lambda: (tmp_path / "asked").exists(), what="the asker's answer")
    assert (tmp_path / "asked").read_text() == "uid://X1/X1/Xb9\n"
    dry = run_wsrun(caller, "--dry-run", "--json", cwd=tmp_path)
    assert json.loads(dry.out)["outputs"] == {"reply": None}
    done = run_wsrun(caller, "--json", cwd=tmp_path)
    assert done.code == 0, done.err
    assert json.loads(done.out)["outputs"]["reply"] == {
        "done": "get-state",
        "ous": "uid://X1/X1/Xb2",
    }
    cli_call = run_wsrun("bus", "call", "xtss", '{"operation": "x", "ousUID": "u"}', cwd=tmp_path)
    assert json.loads(cli_call.out) == {"done": "x", "ous": "u"}
    assert worker.stop() == 0


def test_a_request_that_cannot_be_answered_gets_an_error_reply(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    """The ALMA XTSS: an invalid request, or one whose run fails for good
    before its reply step, is answered ok: false at once (the caller does
    not wait for its timeout); the message is dead as before."""
    from conftest import ROOT

    write(
        tmp_path / "refuser.yaml",
        """
        recipe: refuser
        on: {message: refuse}
        steps:
          - uses: fail
            with: {message: not today}
          - uses: reply
            with: {message: "{{ message }}", body: {ok: true}}
        """,
    )
    xtss = str(ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes" / "xtss.yaml")
    worker = start_worker(xtss, "refuser.yaml")

    def call(body: str, selector: str = "xtss") -> dict:
        done = run_wsrun("bus", "call", selector, body, "--timeout", "120", cwd=tmp_path)
        assert done.code == 0, done.err
        return json.loads(done.out)

    missing = call('{"operation": "get-state"}')
    assert missing["ok"] is False
    assert missing["error"].startswith("invalid message for alma/xtss:")
    assert "ousUID" in missing["error"]
    extra = call('{"operation": "get-state", "ousUID": "u", "cache": "/etc"}')
    assert extra["ok"] is False and "the body may not set cache" in extra["error"]
    refused = call("{}", "refuse")  # the run fails for good before its reply step
    assert refused["ok"] is False and "not today" in refused["error"]
    until(lambda: waiting("alma/xtss:xtss").get("dead") == 2, what="two dead requests")
    until(lambda: waiting("refuser:refuse").get("dead") == 1, what="a dead request")
    assert worker.stop() == 0


def test_a_new_file_runs_its_recipe_once_even_across_restarts(tmp_path: Path, start_worker) -> None:
    write(
        tmp_path / "watch.yaml",
        """
        recipe: watch
        on: {file: "inbox/*.txt"}
        inputs:
          path: {type: path}
        steps:
          - uses: shell
            with: {argv: [sh, -c, 'basename "$0" >> handled', "{{ inputs.path }}"]}
        """,
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_text("a")
    worker = start_worker("watch.yaml")
    handled = tmp_path / "handled"
    until(lambda: handled.exists() and "a.txt" in handled.read_text(), what="a.txt handled")
    assert worker.stop() == 0
    (inbox / "b.txt").write_text("b")
    (inbox / "skip.dat").write_text("not matched")
    again = start_worker("watch.yaml")
    until(lambda: "b.txt" in handled.read_text(), what="b.txt handled")
    time.sleep(0.8)  # a few more scans: nothing is handled twice
    assert handled.read_text().split() == ["a.txt", "b.txt"]
    assert again.stop() == 0


def test_sigterm_finishes_the_run_in_progress_and_loses_nothing(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    """A run says it started, then waits until the test lets it go (at most a
    minute, a guard against a hang): the SIGTERM surely comes while it runs."""
    write(
        tmp_path / "slow.yaml",
        """
        recipe: slow
        on: {message: slow.job}
        inputs:
          n: {type: int, from_message: true}
        steps:
          - uses: shell
            with:
              argv:
                - sh
                - -c
                - 'touch started; n=0; while [ ! -e go ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; echo "$0" >> done.txt'
                - "n{{ inputs.n }}"
        """,
    )
    bus = open_bus()
    worker = start_worker("slow.yaml")
    for n in range(3):
        bus.publish("slow.job", {"n": n})
    until(lambda: (tmp_path / "started").exists(), what="a run to start")
    worker.proc.send_signal(signal.SIGTERM)  # while the first run waits to be let go
    worker.wait_for("finishing the runs in progress")
    (tmp_path / "go").touch()
    assert worker.proc.wait(timeout=30) == 0
    assert (tmp_path / "done.txt").read_text() == "n0\n"  # the run in progress finished
    assert waiting("slow:slow.job") == {"ready": 2}
    assert "finishing the runs in progress" in worker.text()
    again = start_worker("slow.yaml", "--concurrency", "2")
    until(lambda: len((tmp_path / "done.txt").read_text().split()) == 3, what="all done")
    until(lambda: unconsumed(bus.counts()) == 0, what="all acked")
    assert sorted((tmp_path / "done.txt").read_text().split()) == ["n0", "n1", "n2"]
    assert again.stop() == 0


def test_a_state_change_runs_the_recipe_subscribed_to_it(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    from wsrun.stores.state import open_state_store

    write(
        tmp_path / "tracker.yaml",
        """
        recipe: tracker
        on: {state: {kind: ous, to: DeliveryInProgress, substate: ProductsIngested}}
        inputs:
          id: {type: string, from_message: true}
          state: {type: string, from_message: true}
          products: {type: int, default: 0, from_message: true}
        steps:
          - uses: shell
            with: {argv: [sh, -c, 'echo "$0 $1 $2" >> tracked', "{{ inputs.id }}", "{{ inputs.state }}", "p{{ inputs.products }}"]}
        """,
    )
    worker = start_worker("tracker.yaml")
    store = open_state_store()
    store.transition(
        "ous", "X1", state="DeliveryInProgress", substate="IngestingProducts", create=True
    )
    store.transition("ous", "X2", state="DeliveryInProgress", create=True)
    store.transition("ous", "X1", substate="ProductsIngested", attributes={"products": 5})
    tracked = tmp_path / "tracked"
    until(lambda: tracked.exists(), what="the tracker to run")
    bus = open_bus()
    until(lambda: unconsumed(bus.counts()) == 0 and bus.counts().get("") is None)
    assert tracked.read_text() == "X1 DeliveryInProgress p5\n"  # the others were filtered out
    assert worker.stop() == 0


def test_a_state_trigger_started_late_catches_up_once(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    """Changes relayed before the trigger's queue existed were dropped; the
    first start replays the one that brought each entity still there, a
    restart (the queue exists) replays nothing, later changes come as usual."""
    from wsrun.stores.bus.events import relay_state_changes
    from wsrun.stores.state import open_state_store

    write(
        tmp_path / "tracker.yaml",
        """
        recipe: tracker
        on: {state: {kind: ous, to: DeliveryInProgress, substate: ProductsIngested}}
        inputs:
          id: {type: string, from_message: true}
        steps:
          - uses: shell
            with: {argv: [sh, -c, 'echo "$0" >> tracked', "{{ inputs.id }}"]}
        """,
    )
    store = open_state_store()
    for ous in ("X1", "X2", "X3"):
        store.transition("ous", ous, state="DeliveryInProgress", create=True)
        store.transition("ous", ous, substate="ProductsIngested", attributes={"n": 1})
    store.transition("ous", "X1", attributes={"n": 2})  # still there: its last change counts
    store.transition("ous", "X2", state="Delivered")  # moved on: not due
    store.transition("ous", "X3", substate="IngestingProducts")
    bus = open_bus()
    assert relay_state_changes(store, bus) == 9  # nobody subscribed: dropped
    assert unconsumed(bus.counts()) == 0
    tracked = tmp_path / "tracked"
    worker = start_worker("tracker.yaml")
    until(lambda: tracked.exists() and unconsumed(bus.counts()) == 0, what="the catch-up run")
    assert "1 earlier state change(s) queued" in worker.text()
    assert worker.stop() == 0
    again = start_worker("tracker.yaml")
    store.transition("ous", "X3", substate="ProductsIngested")
    until(lambda: len(tracked.read_text().split()) >= 2, what="the live change")
    until(lambda: unconsumed(bus.counts()) == 0, what="all acked")
    assert again.stop() == 0
    assert tracked.read_text().split() == ["X1", "X3"]
    assert "catching up" not in again.text()


def test_triggers_are_checked_before_the_worker_starts(tmp_path: Path, cli) -> None:
    write(
        tmp_path / "nopath.yaml",
        """
        recipe: nopath
        on: {file: "in/*"}
        steps: [{uses: noop}]
        """,
    )
    write(
        tmp_path / "badsel.yaml",
        """
        recipe: badsel
        on: {message: "cached.E*"}
        steps: [{uses: noop}]
        """,
    )
    write(tmp_path / "plain.yaml", "recipe: plain\nsteps: [{uses: noop}]\n")
    checked = cli("validate", "nopath.yaml", "badsel.yaml")
    assert checked.code == 2
    assert "declare it" in checked.err and "whole words" in checked.err
    no_trigger = cli("worker", "plain.yaml")
    assert no_trigger.code == 2 and "has no 'on:' trigger" in no_trigger.err
    write(tmp_path / "hello.yaml", HELLO)
    missing = cli("worker", "hello.yaml")
    assert missing.code == 2 and "input 'site' is not given (give it with --set)" in missing.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no recipe with an 'on:' trigger" in cli("worker", str(empty)).err


def test_a_folder_gives_every_recipe_in_it_with_a_trigger(tmp_path: Path, start_worker) -> None:
    folder = tmp_path / "recipes"
    write(folder / "hello.yaml", HELLO)
    write(folder / "plain.yaml", "recipe: plain\nsteps: [{uses: noop}]\n")
    write(folder / "lifecycle.yaml", "kind: ous\nstates: [A, B]\n")
    (tmp_path / "out").mkdir()
    worker = start_worker(str(folder), "--set", "site=JAO")
    assert worker.text().count("listening:") == 1
    open_bus().publish("hello.JAO", {"name": "fay"})
    until(lambda: (tmp_path / "out" / "fay.txt").exists(), what="fay.txt")
    assert worker.stop() == 0
    assert os.path.exists(tmp_path / "wsrun-home" / "journal.db")


# ---- untrusted messages (issue 14) ---------------------------------------------------


def _foreign_publish(url: str, routing_key: str, bodies: list[bytes]) -> None:
    """Publish as another client would: bare pika, no ``type`` or ``message_id``."""
    import pika

    parts = urlsplit(url)
    prefix = dict(parse_qsl(parts.query)).get("prefix", "")
    connection = pika.BlockingConnection(pika.URLParameters(urlunsplit(parts._replace(query=""))))
    try:
        channel = connection.channel()
        for body in bodies:
            channel.basic_publish(prefix + "wsrun", routing_key, body)
    finally:
        connection.close()


def _sqlite_insert(url: str, queue: str, selector: str, bodies: list[bytes]) -> None:
    """Rows another program wrote straight into the embedded bus's table."""
    import sqlite3
    import uuid

    from wsrun.stores.bus.sqlite import sqlite_path

    db = sqlite3.connect(sqlite_path(url))
    with db:
        for body in bodies:
            id = uuid.uuid4().hex[:16]
            db.execute(
                "INSERT INTO messages (id, origin, selector, body, queue, status, created,"
                " available) VALUES (?, ?, ?, ?, ?, 'ready', ?, ?)",
                (id, id, selector, body, queue, time.time(), time.time()),
            )
    db.close()


def test_poison_bodies_are_parked_dead_once_and_the_worker_goes_on(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    recipe = write(tmp_path / "hello.yaml", HELLO)
    (tmp_path / "out").mkdir()
    worker = start_worker(str(recipe), "--set", "site=EU")
    poison = [b"not json {", b'{"name": "\xff\xfe"}', b'["name", "ann"]']
    foreign = [b'{"name": "fox"}']
    if bus_backend.startswith("amqp"):
        _foreign_publish(bus_backend, "hello.EU", poison + foreign)
    else:
        _sqlite_insert(bus_backend, "hello:hello.EU", "hello.EU", poison + foreign)
    bus = open_bus()
    until(lambda: (tmp_path / "out" / "fox.txt").exists(), what="the foreign message's run")
    until(lambda: waiting("hello:hello.EU") == {"dead": 3}, what="three dead messages")
    assert worker.proc.poll() is None  # still running
    bus.publish("hello.EU", {"name": "gil"})
    until(lambda: (tmp_path / "out" / "gil.txt").exists(), what="a later message's run")
    dead = sorted(bus.messages(status="dead"), key=lambda m: m.error or "")
    errors = [m.error for m in dead]
    assert errors[0].startswith("invalid message for hello: the body is an array")
    assert errors[1].startswith("invalid message for hello: the body is not JSON")
    assert errors[2].startswith("invalid message for hello: the body is not UTF-8")
    assert all(m.selector == "hello.EU" and m.id for m in dead)
    # the foreign message got its selector from the routing key
    assert (tmp_path / "out" / "fox.txt").read_text() == "fox x1 at EU via hello.EU"
    assert worker.stop() == 0
    log = worker.text()
    assert log.count("parked dead") == 3 and "Traceback" not in log
    shown = run_wsrun("bus", "ls", "--status", "dead", cwd=tmp_path)
    assert shown.code == 0 and shown.out.count("dead") == 3
    one = run_wsrun("bus", "show", dead[1].id, cwd=tmp_path)
    assert "  invalid: the body is not JSON" in one.out and '"not json {"' in one.out
    resent = run_wsrun("bus", "resend", dead[0].id, cwd=tmp_path)
    assert resent.code == 0, resent.err


CACHE = """
recipe: cache
on: {message: "cached.{{ inputs.exec }}"}
inputs:
  exec: {type: string, required: true}
  cache: {type: path, required: true}
  euc: {type: string}
  nac: {type: string}
  flag: {type: bool, default: false, from_message: true}
  name: {type: string, required: true, from_message: true}
  extra: {type: path, from_message: true, within: "{{ inputs.cache }}"}
steps:
  - uses: shell
    with: {argv: [sh, -c, 'echo "$0 $1 $2 $3" >> "$4/handled"', "{{ inputs.euc }}", "{{ inputs.name }}", "f{{ inputs.flag }}", "{{ inputs.extra }}", "{{ inputs.cache }}"]}
"""


def test_a_body_cannot_override_what_the_worker_was_given(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    """The JAO cache attack: a cached.JAO body carrying its own euc and cache."""
    write(tmp_path / "cache.yaml", CACHE)
    (tmp_path / "jao").mkdir()
    (tmp_path / "jao" / "in").mkdir()
    (tmp_path / "jao" / "up").symlink_to(tmp_path)
    worker = start_worker(
        "cache.yaml", *("--set", "exec=JAO", "--set", "cache=jao", "--set", "euc=eu-cache")
    )
    bus = open_bus()
    attacks = {
        bus.publish("cached.JAO", {"name": "x", "euc": "/etc", "cache": "/tmp"}): (
            "the body may not set euc (fixed by the worker), cache (fixed by the worker)"
            " (a message may carry flag, name, extra)"
        ),
        bus.publish("cached.JAO", {"name": "x", "nac": "/etc"}): "the body may not set nac (",
        bus.publish("cached.JAO", {"name": "x", "exec": "EU"}): "exec (fixed by the worker)",
        bus.publish("cached.JAO", {"name": "x", "flag": "no"}): (
            "input 'flag': 'no' is not true or false (message bodies are JSON)"
        ),
        bus.publish("cached.JAO", {"name": "x", "extra": "/etc/passwd"}): (
            f"input 'extra': '/etc/passwd' is outside {tmp_path / 'jao'}"
        ),
        bus.publish("cached.JAO", {"name": "x", "extra": "jao/up/cache.yaml"}): "is outside",
    }
    good = bus.publish(
        "cached.JAO", {"name": "ok", "flag": False, "exec": "JAO", "extra": "jao/in"}
    )
    handled = tmp_path / "jao" / "handled"
    until(lambda: handled.exists(), what="the good message's run")
    until(lambda: waiting("cache:cached.JAO") == {"dead": len(attacks)}, what="dead attacks")
    assert handled.read_text() == f"eu-cache ok fFalse {tmp_path / 'jao' / 'in'}\n"
    for id, reason in attacks.items():
        assert reason in bus.get(id).error, bus.get(id).error
    assert bus.get(good) is None or bus.get(good).status == "done"
    assert worker.stop() == 0


def test_the_jao_cache_takes_no_directory_from_a_message(tmp_path: Path, start_worker) -> None:
    """The attack of issue 14: a cached.JAO body with its own euc and cache made
    the JAO cache rsync an arbitrary directory into another."""
    eu, jao, secret, elsewhere = (tmp_path / n for n in ("eu", "jao", "secret", "elsewhere"))
    for d in (eu / "p1", secret / "p1", elsewhere):
        d.mkdir(parents=True)
    (eu / "p1" / "product.data").write_text("product")
    (secret / "p1" / "key").write_text("secret")
    worker = start_worker(
        "alma/replicated-cache",
        *("--set", "exec=JAO", "--set", f"cache={jao}"),
        *("--set", f"euc={eu}"),
    )
    bus = open_bus()
    request = {"fileType": "productsdir", "cachedAt": "EU", "name": "p1"}
    attack = bus.publish("cached.JAO", {**request, "euc": str(secret), "cache": str(elsewhere)})
    archive = bus.publish("cached.JAO", {**request, "archive": str(elsewhere / "archive")})
    good = bus.publish("cached.JAO", request)
    until(lambda: (jao / "p1" / "product.data").exists(), what="the request's pull")
    until(lambda: waiting("alma/replicated-cache:cached.JAO") == {"dead": 2}, what="2 dead")
    assert (
        "the body may not set euc (fixed by the worker), cache (fixed by" in bus.get(attack).error
    )
    assert "the body may not set archive (a message may carry" in bus.get(archive).error
    assert not (jao / "p1" / "key").exists() and list(elsewhere.iterdir()) == []
    assert bus.get(good).status == "done"
    assert worker.stop() == 0


def test_a_duplicate_request_for_an_ous_being_processed_is_acked_not_run(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    from conftest import ROOT
    from wsrun.stores.state import load_lifecycle, open_state_store

    ous = "uid://X1/X1/Xb0"
    store = open_state_store()
    store.register_lifecycle(
        load_lifecycle(str(ROOT / "engine/wsrun/packs/alma/recipes/ous-lifecycle.yaml"))
    )
    store.transition("ous", ous, state="ReadyForProcessing", create=True)
    store.transition("ous", ous, state="Processing", attributes={"claim": "first-message"})
    worker = start_worker(
        "alma/pipeline-driver",
        *("--set", "exec=EU", "--set", f"cache={tmp_path / 'eu'}", "--set", "failure_rate=0"),
    )
    request = {"progID": "2015.1.00657.S", "ousUID": ous, "recipe": "PipelineCalibration"}
    bus = open_bus()
    id = bus.publish("pipeline.process.EU", request)
    worker.wait_for(f"message {id} acked as a duplicate")
    assert "ous uid://X1/X1/Xb0 is already Processing, claimed by first-message" in worker.text()
    assert waiting("alma/pipeline-driver:pipeline.process.EU") == {}
    assert [c.state for c in store.history("ous", ous)] == ["ReadyForProcessing", "Processing"]
    assert not (tmp_path / "eu").exists() and not (tmp_path / "eu-pipeline").exists()
    assert worker.stop() == 0


class _Busy:
    """A web service that answers 503 with Retry-After: 1 once, then 200."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.times: list[float] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.times.append(time.monotonic())
                busy = len(outer.times) == 1
                self.send_response(503 if busy else 200)
                if busy:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_only_transient_failures_are_retried(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    """Unknown entity: dead at once. 503 with Retry-After: retried, not sooner.
    A refused connection: retried until the attempts are used up (3 here)."""
    write(
        tmp_path / "fetch.yaml",
        """
        recipe: fetch
        on: {message: fetch.go}
        inputs:
          what: {type: string, from_message: true}
          url: {type: string, from_message: true}
        steps:
          - if: inputs.what == 'unknown'
            uses: set-state
            with: {kind: ous, id: nobody, state: Processing}
          - if: inputs.what == 'web'
            uses: http
            with: {url: "{{ inputs.url }}", retries: 0, timeout: 10}
        """,
    )
    service = _Busy()
    worker = start_worker("fetch.yaml", "alma/product-ingestor", "--set", "cache=jao")
    bus = open_bus()
    unknown = bus.publish("fetch.go", {"what": "unknown"})
    no_ous = bus.publish("ingest.JAO", {"ousUID": "uid://X9", "timestamp": "t", "productsDir": "p"})
    busy = bus.publish("fetch.go", {"what": "web", "url": service.url})
    down = bus.publish("fetch.go", {"what": "web", "url": "http://127.0.0.1:1/"})
    until(lambda: len(service.times) == 2, what="the busy service to be asked again")
    until(lambda: waiting("fetch:fetch.go") == {"dead": 2}, what="two dead messages")
    assert service.times[1] - service.times[0] >= 1.0  # honoured Retry-After
    log = worker.text()
    assert f"message {unknown} failed (run " in log
    assert "attempt 1; parked dead: a permanent failure): " in log
    assert "no ous 'nobody'" in bus.get(unknown).error
    assert f"message {busy} failed" in log and "will be retried" in log
    assert bus.get(down).attempts == 3 and "ConnectError" in bus.get(down).error
    until(lambda: waiting("alma/product-ingestor:ingest.JAO") == {"dead": 1}, what="no OUS")
    assert bus.get(no_ous).attempts == 1 and "uid://X9: no such OUS" in bus.get(no_ous).error
    assert bus.get(unknown).attempts == 1
    if bus_backend.startswith("sqlite"):  # RabbitMQ keeps no handled messages
        assert bus.get(busy).status == "done"
    assert worker.stop() == 0


def test_yes_and_no_in_a_distillery_request_stay_strings(
    tmp_path: Path, start_worker, bus_backend: str
) -> None:
    """Message bodies are JSON: "no" is a string, so the request is refused,
    not read as false (nor, as the web page read it, as true)."""
    worker = start_worker(
        "distillery/alchemist",
        *("--set", f"edu.caltech.distillery.initialFiles={tmp_path / 'initial'}"),
        *("--set", f"edu.caltech.distillery.completedFiles={tmp_path / 'completed'}"),
    )
    bus = open_bus()
    ids = [
        bus.publish("distillery.process", {"collection": "MS01", "preservation": "no"}),
        bus.publish("distillery.process", {"collection": "MS01", "access": "yes"}),
        bus.publish("distillery.process", {"collection": "MS01", "access": "false"}),
        # the recipe's settings, by their local and their dotted names
        bus.publish(
            "distillery.process",
            {"collection": "MS01", "access": True, "initial": "/", "completed": "/tmp"},
        ),
        bus.publish(
            "distillery.process",
            {"collection": "MS01", "access": True, "edu.caltech.distillery.initialFiles": "/"},
        ),
    ]
    until(lambda: waiting("distillery/alchemist:distillery.process") == {"dead": 5})
    errors = [bus.get(id).error for id in ids]
    assert errors == [
        "invalid message for distillery/alchemist: input 'preservation': 'no' is not true"
        " or false (message bodies are JSON)",
        "invalid message for distillery/alchemist: input 'access': 'yes' is not true"
        " or false (message bodies are JSON)",
        "invalid message for distillery/alchemist: input 'access': 'false' is not true"
        " or false (message bodies are JSON)",
        "invalid message for distillery/alchemist: the body may not set initial, completed"
        " (a message may carry collection, preservation, access)",
        "invalid message for distillery/alchemist: the body may not set"
        " edu.caltech.distillery.initialFiles (a message may carry collection, preservation,"
        " access)",
    ]
    assert not (tmp_path / "initial").exists() and not (tmp_path / "completed").exists()
    assert worker.stop() == 0


def test_a_path_a_message_may_set_must_declare_its_roots(tmp_path: Path, cli) -> None:
    write(
        tmp_path / "loose.yaml",
        """
        recipe: loose
        on: {message: loose.go}
        inputs:
          where: {type: path, from_message: true}
          name: {type: string, from_message: true, within: /srv}
        steps: [{uses: noop}]
        """,
    )
    checked = cli("validate", "loose.yaml")
    assert checked.code == 2
    assert "input 'where' is a path a message may set: declare the directories" in checked.err
    assert "input 'name' is not a path: 'within' confines paths only" in checked.err


def test_a_file_trigger_takes_only_paths_under_its_glob(tmp_path: Path, start_worker) -> None:
    write(
        tmp_path / "watch.yaml",
        """
        recipe: watch
        on: {file: "inbox/*.txt"}
        inputs:
          path: {type: path}
        steps:
          - uses: shell
            with: {argv: [sh, -c, 'echo "$0" >> handled', "{{ inputs.path }}"]}
        """,
    )
    (tmp_path / "inbox").mkdir()
    worker = start_worker("watch.yaml")
    queue = worker.text().split("(queue ")[1].split(")")[0]
    selector = "wsrun." + queue.split(":", 1)[1]
    bus = open_bus()
    outside = bus.publish(selector, {"path": "/etc/passwd"})
    extra = bus.publish(selector, {"path": str(tmp_path / "inbox" / "a.txt"), "x": 1})
    until(lambda: waiting(queue) == {"dead": 2}, what="two dead messages")
    assert "'/etc/passwd' is outside" in bus.get(outside).error
    assert 'body is {"path": "..."} and nothing else' in bus.get(extra).error
    assert not (tmp_path / "handled").exists()
    assert worker.stop() == 0
