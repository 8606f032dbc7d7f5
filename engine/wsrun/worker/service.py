"""``wsrun worker``: run recipes when messages arrive, states change or files appear.

Every trigger becomes a durable bus queue, so all three kinds share one
delivery path: a message is claimed atomically, the recipe runs through the
normal Runner (journaled like any run, in a thread of this process), and the
message is acked only after the run succeeded. A run that failed for a
transient reason (a service down, a timeout) is retried with back-off and then
parked as dead; any other failure, and a body that cannot be read or is not
valid input, is parked dead at once with the reason; work another run already
claimed is acked as a duplicate (``wsrun.worker.retry``).

- ``on: {message: SELECTOR}``: queue ``<recipe>:<selector>``; the body fills the
  inputs marked ``from_message`` that ``--set`` did not fix (``wsrun.worker.inputs``).
- ``on: {state: {kind, to, from?, substate?}}``: queue ``<recipe>:state.<kind>.<to>``,
  fed by ``relay_state_changes``, which this worker runs several times a second; the
  entity's fields fill the inputs marked ``from_message``.
- ``on: {file: GLOB}``: the worker scans the glob and publishes each new, settled
  file (input ``path``, which must lie under the glob's fixed directory) to the
  recipe's own queue; files handled are remembered in
  ``worker.db`` under ``$WSRUN_HOME``, across restarts.

Stopping (SIGTERM/SIGINT, or ``stop()``): no new claims; runs in progress
finish and are acked or failed; nothing claimed is left unaccounted for.

One piece: the three triggers, claiming, running and acking share the worker's
threads and its stop protocol; the inputs a message may set and the retry policy are
modules of their own (``inputs``, ``retry``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wsrun.core import expr
from wsrun.core.journal import Journal, default_home
from wsrun.core.migrate import enable_wal
from wsrun.core.recipe import Recipe, RecipeNotFound, load_recipe, resolve
from wsrun.core.runner import Runner
from wsrun.core.scope import RunError, coerce_inputs, convert_input, resolve_settings
from wsrun.core.settings import Settings
from wsrun.stores.bus import Bus, Message
from wsrun.stores.bus.base import DEFAULT_LEASE
from wsrun.stores.bus.events import catch_up, relay_state_changes
from wsrun.worker.inputs import InvalidMessage, confine, from_body
from wsrun.worker.retry import classify

#: Seconds between two looks for new files.
FILE_SCAN_EVERY = 0.25
#: Seconds between two relays of pending state changes to the bus (set-state
#: steps leave them in the store's outbox; a worker with a state trigger
#: publishes them).
RELAY_EVERY = 0.1
#: Longest the dispatcher sleeps before looking at its timers again.
TICK = 0.25
#: Fields of a state-change message a state-triggered recipe may declare as inputs.
STATE_FIELDS = ("kind", "id", "state", "substate", "from_state", "from_substate")


class WorkerError(Exception):
    """The worker cannot start: no recipe with a trigger, a bad trigger."""


@dataclass
class Trigger:
    """One recipe's subscription: the queue it reads and how a message becomes inputs."""

    recipe: Recipe
    kind: str  # message, state or file
    queue: str
    pattern: str
    given: dict[str, Any]  # inputs from --set
    state_kind: str | None = None
    state_to: str | None = None
    state_from: str | None = None
    state_substate: str | None = None
    glob: str | None = None
    label: str = field(default="")

    def inputs(
        self, message: Message, workdir: str, settings: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The run's inputs from a message; None when a state change does not
        pass the trigger's filters (the message is then simply acked).
        InvalidMessage when the body may not start a run."""
        body = message.body
        if self.kind == "file":
            if set(body) != {"path"} or not isinstance(body["path"], str):
                raise InvalidMessage('a file trigger\'s body is {"path": "..."} and nothing else')
            confine("path", body["path"], [glob_root(self.glob or "")], workdir)
            return {**self.given, "path": body["path"]}
        if self.kind == "message":
            return from_body(self.recipe, self.given, body, workdir=workdir, settings=settings)
        if self.state_from is not None and body.get("from_state") != self.state_from:
            return None
        if self.state_substate is not None and body.get("substate") != self.state_substate:
            return None
        attributes = body.get("attributes")
        offered = {
            **(attributes if isinstance(attributes, dict) else {}),
            **{k: body.get(k) for k in STATE_FIELDS},
        }
        return from_body(
            self.recipe, self.given, offered, workdir=workdir, settings=settings, strict=False
        )


def replied(report: Any, message: Message) -> bool:
    """Whether the run answered the request ``message`` (a ``reply`` step did)."""
    return any(
        e.get("op") == "publish" and e.get("path") == message.reply_to
        for step in report.steps
        for e in step.effects
    )


def glob_root(pattern: str) -> str:
    """The directory of a glob before its first wildcard: files it matches lie inside."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


def find_recipes(refs: Sequence[str]) -> list[Recipe]:
    """The recipes with ``on:`` named by files, packaged names or folders
    (every ``*.yaml`` in a folder that declares ``on:``), validated."""
    from wsrun.core.loader import YamlError
    from wsrun.core.validate import load_valid

    paths: list[str] = []
    for ref in refs:
        if os.path.isdir(ref) and not os.path.isfile(os.path.join(ref, "recipe.yaml")):
            for name in sorted(os.listdir(ref)):
                path = os.path.join(ref, name)
                if name.endswith((".yaml", ".yml")) and os.path.isfile(path):
                    try:
                        data = load_recipe(os.path.abspath(path)).data
                    except YamlError:
                        continue  # not ours to judge: a folder may hold other YAML
                    if "on" in data and "steps" in data:
                        paths.append(os.path.abspath(path))
            continue
        try:
            path = resolve(ref)
        except RecipeNotFound:
            raise WorkerError(f"no recipe '{ref}'") from None
        if "on" not in load_recipe(path).data:
            raise WorkerError(f"{path}: the recipe has no 'on:' trigger")
        paths.append(path)
    if not paths:
        raise WorkerError(f"no recipe with an 'on:' trigger in {', '.join(refs)}")
    from wsrun.core import extras
    from wsrun.stores.preflight import preflight

    recipes = [load_valid(p) for p in dict.fromkeys(paths)]
    for recipe in recipes:  # a backend whose extra is missing: refuse to start, not per message
        try:
            preflight(recipe)
        except extras.MissingExtra as e:
            raise WorkerError(f"{recipe.path}: {e}") from None
    return recipes


def build_triggers(recipes: Sequence[Recipe], sets: Mapping[str, str]) -> list[Trigger]:
    """Each recipe's triggers, selectors rendered with the inputs given by ``--set``."""
    triggers = []
    for recipe in recipes:
        try:
            typed = {
                k: convert_input(k, spec.get("type", "string"), sets[k], spec, os.getcwd())
                for k, spec in recipe.inputs.items()
                if k in sets
            }
        except RunError as e:
            raise WorkerError(f"{recipe.path}: {e}") from None
        on = recipe.data["on"]
        if "message" in on:
            try:
                selector = str(expr.render(on["message"], {"inputs": _AllInputs(recipe, typed)}))
            except expr.ExpressionError as e:
                raise WorkerError(
                    f"{recipe.where('on', 'message')}: {e.message} (give it with --set)"
                ) from None
            triggers.append(
                Trigger(recipe, "message", f"{recipe.name}:{selector}", selector, typed)
            )
        if "state" in on:
            spec = on["state"]
            pattern = f"state.{spec['kind']}.{spec.get('to', '*')}"
            triggers.append(
                Trigger(
                    recipe,
                    "state",
                    f"{recipe.name}:{pattern}",
                    pattern,
                    typed,
                    state_kind=spec["kind"],
                    state_to=spec.get("to"),
                    state_from=spec.get("from"),
                    state_substate=spec.get("substate"),
                )
            )
        if "file" in on:
            pattern_glob = os.path.join(recipe.dir, on["file"])
            digest = hashlib.sha256(f"{recipe.path}\0{pattern_glob}".encode()).hexdigest()[:12]
            selector = f"wsrun.file.{digest}"
            triggers.append(
                Trigger(
                    recipe,
                    "file",
                    f"{recipe.name}:file.{digest}",
                    selector,
                    typed,
                    glob=pattern_glob,
                )
            )
    for t in triggers:
        t.label = f"{t.recipe.name} <- {t.glob or t.pattern}"
    return triggers


class _AllInputs(dict):  # type: ignore[type-arg]
    """Inputs for rendering a selector: a missing one is named in the error."""

    def __init__(self, recipe: Recipe, given: dict[str, Any]) -> None:
        super().__init__(given)
        self.recipe = recipe

    def __missing__(self, key: str) -> Any:
        raise expr.ExpressionError(f"input '{key}' is not given")


class SeenFiles:
    """Files a file trigger already published, in ``worker.db``: a file is
    handled once; when it disappears it is forgotten, so a new file of the same
    name is handled again."""

    def __init__(self, home: str) -> None:
        os.makedirs(home, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(home, "worker.db"), timeout=30, isolation_level=None)
        enable_wal(self.db)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen_files (queue TEXT NOT NULL, path TEXT NOT NULL,"
            " seen REAL NOT NULL, PRIMARY KEY (queue, path))"
        )

    def known(self, queue: str) -> set[str]:
        rows = self.db.execute("SELECT path FROM seen_files WHERE queue=?", (queue,))
        return {r[0] for r in rows}

    def take(self, queue: str, path: str) -> bool:
        """Record ``path`` as handled; False when another worker did first."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO seen_files (queue, path, seen) VALUES (?, ?, ?)",
            (queue, path, time.time()),
        )
        return cursor.rowcount == 1

    def forget(self, queue: str, paths: set[str]) -> None:
        self.db.executemany(
            "DELETE FROM seen_files WHERE queue=? AND path=?", [(queue, p) for p in paths]
        )


class Worker:
    """Claims messages for its triggers and runs their recipes, at most
    ``concurrency`` runs of each recipe at a time, until stopped.

    The limit is per recipe, not shared: a recipe that ``call``s another one
    served by the same worker (the XTSS) can never take every slot and leave
    the answering recipe none.
    """

    def __init__(
        self,
        triggers: Sequence[Trigger],
        bus: Bus,
        settings: Settings,
        *,
        concurrency: int = 1,
        lease: float = DEFAULT_LEASE,
        state_url: str | None = None,
        relay: bool = False,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.triggers = list(triggers)
        self.by_queue = {t.queue: t for t in self.triggers}
        self.bus = bus
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self.lease = lease
        self.state_url = state_url
        self.relay = relay
        self.log = log
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self.env = dict(os.environ, WSRUN_BUS_URL=bus.url)
        if state_url:
            self.env["WSRUN_STATE_URL"] = state_url
        self.workdir = os.getcwd()
        self.stopping = threading.Event()
        self.in_flight: dict[tuple[str, str], tuple[Message, Future[None]]] = {}
        self.running: dict[str, int] = {t.recipe.path: 0 for t in self.triggers}
        self.freed = threading.Event()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.handled = 0
        self._store: Any = None
        self._relay_problem: str | None = None
        self._seen: SeenFiles | None = None
        self._settling: dict[tuple[str, str], tuple[int, int]] = {}

    # ---- the loop ------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; ``run`` returns once the runs in progress are done."""
        self.stopping.set()

    def run(self) -> None:
        known = set(self.bus.queues()) if any(t.kind == "state" for t in self.triggers) else set()
        for t in self.triggers:
            self.bus.declare_queue(t.queue, [t.pattern])
            if t.kind == "state" and t.queue not in known:
                self.catch_up(t)
            self.log(f"listening: {t.label} (queue {t.queue})")
        queues = [t.queue for t in self.triggers]
        next_scan = next_relay = next_renew = 0.0
        threads = self.concurrency * len(self.running)
        with ThreadPoolExecutor(threads, thread_name_prefix="wsrun-run") as pool:
            try:
                while not self.stopping.is_set():
                    now = time.monotonic()
                    if now >= next_relay and self.relay:
                        self.relay_states()
                        next_relay = now + RELAY_EVERY
                    if now >= next_scan and any(t.glob for t in self.triggers):
                        self.scan_files()
                        next_scan = now + FILE_SCAN_EVERY
                    if now >= next_renew:
                        self.renew_leases()
                        next_renew = now + self.lease / 3
                    with self.lock:
                        free = [
                            q
                            for q in queues
                            if self.running[self.by_queue[q].recipe.path] < self.concurrency
                        ]
                    if not free:
                        self.freed.wait(TICK)
                        self.freed.clear()
                        continue
                    message = self.claim_next(free)
                    if message is None:
                        # a recipe at its limit is looked at again soon, and so are
                        # the state changes to relay
                        pause = TICK if len(free) == len(queues) else 0.02
                        if self.relay:
                            pause = min(pause, max(0.0, next_relay - time.monotonic()))
                        self.bus.wait(free, pause)
                        continue
                    queues.remove(message.queue)  # its turn is over: others go first
                    queues.append(message.queue)
                    trigger = self.by_queue[message.queue]
                    with self.lock:
                        self.running[trigger.recipe.path] += 1
                        future = pool.submit(self.handle, trigger, message)
                        self.in_flight[(message.queue, message.id)] = (message, future)
            finally:
                self.stopping.set()
                self.finish_in_flight()

    def claim_next(self, queues: list[str]) -> Message | None:
        """The next message of any of ``queues``, in the order given."""
        for queue in queues:
            message = self.bus.claim(queue, self.consumer, self.lease)
            if message is not None:
                return message
        return None

    def finish_in_flight(self) -> None:
        """Wait for the runs in progress, renewing their leases meanwhile."""
        if self.in_flight:
            self.log(f"stopping: waiting for {len(self.in_flight)} run(s) in progress")
        while True:
            with self.lock:
                pending = [f for _, f in self.in_flight.values()]
            if not pending:
                return
            self.renew_leases()
            for f in pending:
                try:
                    f.result(timeout=min(TICK * 4, self.lease / 3))
                except Exception:  # handle() reports its own errors
                    pass

    def renew_leases(self) -> None:
        with self.lock:
            held = [m for m, _ in self.in_flight.values()]
        for message in held:
            self.bus.extend(message, self.lease)

    # ---- one message ----------------------------------------------------------------

    def journal(self) -> Journal:
        """This thread's journal: a SQLite connection is not shared between threads."""
        journal: Journal | None = getattr(self.local, "journal", None)
        if journal is None:
            journal = self.local.journal = Journal()
        return journal

    def park(self, message: Message, name: str, reason: str) -> None:
        """Park a message that cannot start a run dead at once, logging it once."""
        error = f"invalid message for {name}: {reason}"
        self.bus.fail(message, error, retry=False)
        self.log(f"{name}: message {message.id} parked dead: {reason}")
        self.answer_failure(message, error)

    def answer_failure(self, message: Message, error: str) -> None:
        """Tell a caller waiting on a request that will not be answered (it is
        dead) why, instead of leaving it to its timeout: ``{"ok": false,
        "error": ...}``, the shape of a refusal."""
        if message.reply_to:
            self.bus.reply(message, {"ok": False, "error": error})

    def handle(self, trigger: Trigger, message: Message) -> None:
        started = time.monotonic()
        name = trigger.recipe.name
        try:
            if message.invalid:
                self.park(message, name, message.invalid)
                return
            try:
                settings, _ = resolve_settings(trigger.recipe, self.settings)
                inputs = trigger.inputs(message, self.workdir, settings)
            except (InvalidMessage, RunError) as e:
                self.park(message, name, str(e))
                return
            if inputs is None:
                self.bus.ack(message)
                return
            try:
                inputs = coerce_inputs(trigger.recipe, inputs, self.workdir)
                journal = self.journal()
                runner = Runner(
                    trigger.recipe,
                    inputs,
                    self.settings,
                    journal=journal,
                    workdir=self.workdir,
                    env=self.env,
                    log=lambda line: self.log(f"{name}: {line}"),
                )
            except RunError as e:
                self.park(message, name, str(e))
                return
            runner.scope["message"] = message.scope()
            report = runner.run()
            journal.flush()
            took = time.monotonic() - started
            verdict = classify(report.cause)
            if report.status == "failed" and verdict.kind == "duplicate":
                self.bus.ack(message)
                self.log(
                    f"{name}: message {message.id} acked as a duplicate (run {report.run_id}):"
                    f" {report.error}"
                )
            elif report.status == "failed":
                transient = verdict.kind == "transient"
                status = self.bus.fail(
                    message,
                    report.error or "failed",
                    retry=transient,
                    delay=verdict.retry_after,
                )
                then = "will be retried" if status == "ready" else "parked dead"
                if not transient:
                    then += ": a permanent failure"
                if status == "dead" and not replied(report, message):
                    self.answer_failure(message, report.error or "failed")
                self.log(
                    f"{name}: message {message.id} failed (run {report.run_id}, attempt "
                    f"{message.attempts}; {then}): {report.error}"
                )
            else:
                self.bus.ack(message)
                self.log(
                    f"{name}: message {message.id} {report.status} in {took:.2f}s (run {report.run_id})"
                )
        except Exception as e:  # a bug or a lost database: the message is retried
            self.log(f"{name}: message {message.id} failed: {type(e).__name__}: {e}")
            try:
                self.bus.fail(message, f"{type(e).__name__}: {e}")
            except Exception as lost:  # the bus is gone too: its lease brings it back
                self.log(f"{name}: message {message.id} not given back: {lost}")
        finally:
            with self.lock:
                self.in_flight.pop((message.queue, message.id), None)
                self.running[trigger.recipe.path] -= 1
                self.handled += 1
            self.freed.set()

    # ---- feeding state and file triggers -------------------------------------------------

    def state_store(self) -> Any:
        if self._store is None:
            from wsrun.stores.state import open_state_store

            self._store = open_state_store(self.state_url)
        return self._store

    def catch_up(self, t: Trigger) -> None:
        """A state trigger's queue is new: give it the changes that brought
        entities where it points before it existed (the relay dropped them:
        nobody subscribed), so a recipe started late still sees them."""
        assert t.state_kind is not None
        try:
            n = catch_up(
                self.state_store(),
                self.bus,
                t.queue,
                t.state_kind,
                t.state_to,
                t.state_from,
                t.state_substate,
            )
        except Exception as e:  # the store is down: the next start catches up
            self.bus.delete_queue(t.queue)
            raise WorkerError(
                f"{t.recipe.name}: cannot catch up on earlier state changes"
                f" ({type(e).__name__}: {e}); start again once the state store answers"
            ) from None
        if n:
            self.log(f"{t.recipe.name}: {n} earlier state change(s) queued (catching up)")

    def relay_states(self) -> None:
        """Publish state changes nobody relayed yet (their maker crashed)."""
        try:
            relay_state_changes(self.state_store(), self.bus, self.consumer)
        except Exception as e:  # the store is down or not there: try again later
            problem = f"relaying state changes failed: {type(e).__name__}: {e}"
            if problem != self._relay_problem:
                self.log(problem)  # once, not ten times a second
            self._relay_problem = problem
        else:
            self._relay_problem = None

    def scan_files(self) -> None:
        """Publish each new file of a file trigger once it has settled (same
        size and mtime on two scans in a row, so half-written files wait)."""
        if self._seen is None:
            self._seen = SeenFiles(default_home())
        for t in self.triggers:
            if not t.glob:
                continue
            known = self._seen.known(t.queue)
            present = {p for p in glob.glob(t.glob, recursive=True) if os.path.isfile(p)}
            gone = known - present
            if gone:
                self._seen.forget(t.queue, gone)
            for path in sorted(present - known):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                key, mark = (t.queue, path), (st.st_size, st.st_mtime_ns)
                if self._settling.get(key) != mark:
                    self._settling[key] = mark
                    continue
                del self._settling[key]
                if self._seen.take(t.queue, path):
                    self.bus.publish(t.pattern, {"path": path})
            for key in [k for k in self._settling if k[0] == t.queue and k[1] not in present]:
                del self._settling[key]
