"""Progress people can plan with: files and bytes done against the plan's
totals, smoothed rates and an ETA, for every long step.

A step reports through ``ctx.progress.task(...)`` and ``advance(bytes, files)``
(see ``wsrun.core.step.Progress``). During a run the runner gives each step a
``Tracker``: it keeps the counts (``TaskState``) and passes them to sinks,
each of which throttles itself and must stay cheap on every call:

- ``RichProgress`` (``wsrun.core.output``): a live line per step on a terminal;
- ``Heartbeat``: a plain line every N seconds (``$WSRUN_HEARTBEAT``, the
  setting ``wsrun.progress.heartbeat``; default 5) for logs and pipes, also
  while a step makes no progress at all;
- ``JournalProgress``: the newest figures in the step's journal row, at most
  once a second per run, which the web run page and ``wsrun runs show`` read.

The line is the same everywhere, e.g.
``copy: 412,000/1,000,000 files, 38.2/92.7 GB, 2,130 files/s, 310 MB/s, ETA 4m36s``.

One piece: the tracker and its three sinks (terminal line, heartbeat lines, the
journal row) share the rate and ETA arithmetic and the throttling.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TextIO

from wsrun.core.step import Progress, ProgressTask

#: The setting naming the heartbeat interval in seconds (0 or "off": none).
HEARTBEAT_SETTING = "wsrun.progress.heartbeat"
#: The environment variable that overrides it (``--set`` still wins).
HEARTBEAT_ENV = "WSRUN_HEARTBEAT"
DEFAULT_HEARTBEAT = 5.0
#: The journal gets a run's progress at most this often (seconds).
JOURNAL_EVERY = 1.0
#: Time constant (seconds) of the rates' exponential moving average: a rate
#: follows a change of speed within a few of these, and ignores a hiccup.
SMOOTHING = 5.0
#: Shortest stretch of time a rate sample spans; shorter ones are merged.
MIN_SAMPLE = 0.25

Clock = Callable[[], float]


# ---- counting and rates -------------------------------------------------------------


class Meter:
    """Files/s and bytes/s, smoothed: an exponential moving average of rates
    measured over stretches of at least MIN_SAMPLE seconds, weighted by the
    stretch's length, so the figures do not depend on how often steps report."""

    def __init__(self, start: float, tau: float = SMOOTHING) -> None:
        self.tau = tau
        self.start = start
        self.t, self.files, self.bytes = start, 0, 0
        self.rate: tuple[float, float] | None = None

    def _blend(self, now: float, files: int, bytes_: int) -> tuple[float, float] | None:
        dt = now - self.t
        if dt < MIN_SAMPLE:
            return None
        sample = ((files - self.files) / dt, (bytes_ - self.bytes) / dt)
        if self.rate is None:
            return sample
        w = 1.0 - math.exp(-dt / self.tau)
        return (
            self.rate[0] + w * (sample[0] - self.rate[0]),
            self.rate[1] + w * (sample[1] - self.rate[1]),
        )

    def update(self, now: float, files: int, bytes_: int) -> None:
        """Take a sample once enough time has passed since the last one."""
        blended = self._blend(now, files, bytes_)
        if blended is not None:
            self.rate, self.t, self.files, self.bytes = blended, now, files, bytes_

    def rates(self, now: float, files: int, bytes_: int) -> tuple[float, float]:
        """(files/s, bytes/s) now, counting the stretch since the last sample
        (so a stalled step's rate falls towards 0 instead of staying put)."""
        blended = self._blend(now, files, bytes_)
        if blended is not None:
            return max(0.0, blended[0]), max(0.0, blended[1])
        if self.rate is not None:
            return max(0.0, self.rate[0]), max(0.0, self.rate[1])
        elapsed = now - self.start
        if elapsed <= 0:
            return 0.0, 0.0
        return files / elapsed, bytes_ / elapsed


@dataclass(frozen=True)
class Snapshot:
    """A task's figures at one moment, as shown and as journaled."""

    label: str
    files: int
    bytes: int
    total_files: int | None
    total_bytes: int | None
    files_per_s: float
    bytes_per_s: float
    eta: float | None  # seconds; None when unknown (no total, or no progress yet)
    elapsed: float
    updated: float  # wall clock (time.time()) of the snapshot

    def to_json(self) -> dict[str, Any]:
        """The figures as the journal keeps them (and the API and runs show give them)."""
        data = asdict(self)
        data["files_per_s"] = round(self.files_per_s, 3)
        data["bytes_per_s"] = round(self.bytes_per_s, 1)
        data["eta"] = None if self.eta is None else round(self.eta, 1)
        data["elapsed"] = round(self.elapsed, 3)
        data["fraction"] = self.fraction
        data["line"] = format_line(self)
        return data

    @property
    def fraction(self) -> float | None:
        """How much is done, from 0 to 1 (bytes when their total is known, else files)."""
        if self.total_bytes:
            return min(1.0, max(0.0, self.bytes / self.total_bytes))
        if self.total_files:
            return min(1.0, max(0.0, self.files / self.total_files))
        return None


def eta_seconds(done: float, total: float | None, rate: float) -> float | None:
    """Seconds left at ``rate``: never negative; None without a total or a rate."""
    if total is None or not math.isfinite(rate) or rate <= 0:
        return None
    left = max(0.0, total - done)
    eta = left / rate
    return eta if math.isfinite(eta) else None


class TaskState:
    """One progress task's counts (guarded by ``lock``) and its rate meter."""

    def __init__(
        self,
        label: str,
        total_files: int | None,
        total_bytes: int | None,
        now: float,
        key: str = "",
    ) -> None:
        self.label = label
        self.key = key
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.started = now
        self.meter = Meter(now)
        self.lock = threading.Lock()

    def advance(self, bytes_: int, files: int, now: float) -> None:
        """Count a report (the caller holds ``lock``)."""
        self.files += files
        self.bytes += bytes_
        self.meter.update(now, self.files, self.bytes)

    def snapshot(self, now: float) -> Snapshot:
        """The figures at ``now``: counts, rates, and the ETA from bytes when their
        total is known, else from files."""
        files_per_s, bytes_per_s = self.meter.rates(now, self.files, self.bytes)
        if self.total_bytes:
            eta = eta_seconds(self.bytes, self.total_bytes, bytes_per_s)
        else:
            eta = eta_seconds(self.files, self.total_files, files_per_s)
        return Snapshot(
            label=self.label,
            files=self.files,
            bytes=self.bytes,
            total_files=self.total_files,
            total_bytes=self.total_bytes,
            files_per_s=files_per_s,
            bytes_per_s=bytes_per_s,
            eta=eta,
            elapsed=max(0.0, now - self.started),
            updated=time.time(),
        )


# ---- formatting -----------------------------------------------------------------------

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def format_count(n: float) -> str:
    """An integer count with thousands separators: 412,000."""
    return f"{int(n):,}"


def _unit(n: float) -> int:
    index = 0
    n = abs(n)
    while n >= 1000 and index < len(_UNITS) - 1:
        n /= 1000
        index += 1
    return index


def format_bytes(n: float, unit: int | None = None) -> str:
    """A size in decimal units, as disks and networks are sold: 38.2 GB."""
    index = _unit(n) if unit is None else unit
    if index == 0:
        return f"{int(n)} B"
    value = n / 1000**index
    return f"{value:.0f} {_UNITS[index]}" if abs(value) >= 100 else f"{value:.1f} {_UNITS[index]}"


def format_bytes_of(done: int, total: int | None) -> str:
    """``done/total`` in the total's unit: 38.2/92.7 GB (or just the done figure)."""
    if total is None:
        return format_bytes(done)
    index = _unit(max(done, total))
    if index == 0:
        return f"{done}/{total} B"
    scale = 1000**index
    return f"{done / scale:.1f}/{total / scale:.1f} {_UNITS[index]}"


def format_rate(rate: float, what: str) -> str:
    """``2,130 files/s``, ``4.5 files/s`` or (``what`` = "bytes") ``310 MB/s``."""
    if not math.isfinite(rate) or rate < 0:
        rate = 0.0
    if what == "bytes":
        return f"{format_bytes(rate)}/s"
    if rate < 10:
        return f"{rate:.1f} {what}/s"
    return f"{format_count(round(rate))} {what}/s"


def format_eta(seconds: float | None) -> str:
    """A duration a person reads at a glance: 42s, 4m36s, 2h05m, 3d04h; ? when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_line(snap: Snapshot) -> str:
    """The one line every display shows for a task (without its label)."""
    if snap.total_files is not None:
        files = f"{format_count(snap.files)}/{format_count(snap.total_files)} files"
    else:
        files = f"{format_count(snap.files)} files"
    parts = [
        files,
        format_bytes_of(snap.bytes, snap.total_bytes),
        format_rate(snap.files_per_s, "files"),
        format_rate(snap.bytes_per_s, "bytes"),
    ]
    if snap.total_files is not None or snap.total_bytes is not None:
        parts.append(f"ETA {format_eta(snap.eta)}")
    return ", ".join(parts)


def heartbeat_interval(settings: Any = None, env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between heartbeat lines; None when they are off. ``--set
    wsrun.progress.heartbeat=N`` wins over ``$WSRUN_HEARTBEAT``, which wins over
    the setting from a profile or the environment. Raises ValueError naming
    where a value that is not a number of seconds came from."""
    import os

    env = os.environ if env is None else env
    found = settings.get(HEARTBEAT_SETTING) if settings is not None else None
    if found is not None and found.source == "--set":
        text, where = found.value, f"--set {HEARTBEAT_SETTING}"
    elif env.get(HEARTBEAT_ENV) is not None:
        text, where = env[HEARTBEAT_ENV], f"${HEARTBEAT_ENV}"
    elif found is not None:
        text, where = found.value, f"{HEARTBEAT_SETTING} ({found.source})"
    else:
        return DEFAULT_HEARTBEAT
    text = text.strip().lower()
    if text in ("off", "no", "none", "false"):
        return None
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number of seconds (or off)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {text!r} is not a number of seconds (or off)")
    return value or None


# ---- sinks and the tracker ------------------------------------------------------------


class Sink(Protocol):
    """Shows or keeps tasks' progress. ``updated`` comes with every advance
    (holding the task's lock), so it must throttle itself and stay cheap."""

    def opened(self, state: TaskState, now: float) -> None: ...

    def updated(self, state: TaskState, now: float) -> None: ...

    def closed(self, state: TaskState, now: float) -> None: ...


class SinkProgress(Progress):
    """A Progress that is also a sink: used alone (a step run outside a runner)
    it tracks its own tasks; the runner adds it to each step's Tracker."""

    clock: Clock = staticmethod(time.monotonic)

    def opened(self, state: TaskState, now: float) -> None:
        pass

    def updated(self, state: TaskState, now: float) -> None:
        pass

    def closed(self, state: TaskState, now: float) -> None:
        pass

    def task(
        self, description: str, total_bytes: int | None = None, total_files: int | None = None
    ) -> ProgressTask:
        return Tracker([self], clock=self.clock).task(description, total_bytes, total_files)


class _Forward:
    """A sink that passes advances on to a plain Progress (one given to the
    Runner by a program of its own)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[int, tuple[ProgressTask, list[int]]] = {}

    def opened(self, state: TaskState, now: float) -> None:
        task = self.progress.task(state.label, state.total_bytes, state.total_files)
        self.tasks[id(state)] = (task, [0, 0])

    def updated(self, state: TaskState, now: float) -> None:
        task, seen = self.tasks[id(state)]
        task.advance(bytes=state.bytes - seen[0], files=state.files - seen[1])
        seen[0], seen[1] = state.bytes, state.files

    def closed(self, state: TaskState, now: float) -> None:
        task, _ = self.tasks.pop(id(state))
        task.close()


class _Task:
    def __init__(self, state: TaskState, sinks: list[Any], clock: Clock) -> None:
        self.state = state
        self.sinks = sinks
        self.clock = clock
        self.closed = False

    def advance(self, bytes: int = 0, files: int = 0) -> None:
        state = self.state
        with state.lock:
            now = self.clock()
            state.advance(bytes, files, now)
            for sink in self.sinks:
                sink.updated(state, now)

    def close(self) -> None:
        with self.state.lock:
            if self.closed:
                return
            self.closed = True
            now = self.clock()
            for sink in self.sinks:
                sink.closed(self.state, now)


class Tracker(Progress):
    """What a step's ``ctx.progress`` is during a run: each task's counts are
    kept here once and given to every sink. ``key`` is the step's journal key;
    ``label`` names the step in the lines shown."""

    def __init__(
        self,
        sinks: list[Any],
        key: str = "",
        label: str = "",
        clock: Clock = time.monotonic,
        shown: Callable[[str], str] = str,
    ) -> None:
        self.sinks = [s if hasattr(s, "updated") else _Forward(s) for s in sinks]
        self.key = key
        self.label = label
        self.clock = clock
        #: What a label may show (the run's masker: no secret in a printed path).
        self.shown = shown

    def task(
        self, description: str, total_bytes: int | None = None, total_files: int | None = None
    ) -> ProgressTask:
        label = self.label or description
        if self.label and description and description != self.label:
            label = f"{self.label} ({description})"
        now = self.clock()
        state = TaskState(self.shown(label), total_files, total_bytes, now, key=self.key)
        with state.lock:
            for sink in self.sinks:
                sink.opened(state, now)
        return _Task(state, self.sinks, self.clock)


class Heartbeat(SinkProgress):
    """A plain line for each open task every ``interval`` seconds, for logs and
    pipes: on an advance once the interval has passed, and from a ticker thread
    while a task makes no progress (a stalled transfer still says so)."""

    def __init__(
        self,
        out: TextIO,
        interval: float,
        clock: Clock = time.monotonic,
        ticker: bool = True,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self.out = out
        self.interval = interval
        self.clock = clock  # type: ignore[assignment]
        self.ticker = ticker
        self.write = write or self._print
        self.lock = threading.Lock()
        self.open: dict[int, tuple[TaskState, list[float]]] = {}
        self.stop: threading.Event | None = None

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")  # one write: a line is never split by another thread's
        self.out.flush()

    def _beat(self, state: TaskState, last: list[float], now: float) -> None:
        last[0] = now
        self.write(f"{state.label}: {format_line(state.snapshot(now))}")

    def opened(self, state: TaskState, now: float) -> None:
        with self.lock:
            self.open[id(state)] = (state, [now])
            if self.ticker and self.stop is None:
                self.stop = threading.Event()
                threading.Thread(
                    target=self._tick, args=(self.stop,), name="wsrun-heartbeat", daemon=True
                ).start()

    def updated(self, state: TaskState, now: float) -> None:
        entry = self.open.get(id(state))
        if entry is not None and now - entry[1][0] >= self.interval:
            with self.lock:
                self._beat(state, entry[1], now)

    def closed(self, state: TaskState, now: float) -> None:
        with self.lock:
            self.open.pop(id(state), None)
            if not self.open and self.stop is not None:
                self.stop.set()
                self.stop = None

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(max(self.interval, 0.1)):
            with self.lock:
                entries = list(self.open.values())
            for state, last in entries:
                # the task's lock first (as advance takes it), then ours
                with state.lock, self.lock:
                    now = self.clock()
                    if id(state) in self.open and now - last[0] >= self.interval:
                        self._beat(state, last, now)


class JournalProgress:
    """Writes the newest figures of a run's tasks to their steps' journal rows,
    at most about once every JOURNAL_EVERY seconds for the whole run: a million
    advances make a bounded number of small writes, each one row updated in
    place. A report that came between two writes is written by a ticker
    thread a second later, so a step that then stalls still shows where it is."""

    def __init__(
        self,
        journal: Any,
        run_id: str,
        every: float = JOURNAL_EVERY,
        clock: Clock = time.monotonic,
        ticker: bool = True,
    ) -> None:
        self.journal = journal
        self.run_id = run_id
        self.every = every
        self.clock = clock
        self.ticker = ticker
        self.last = -math.inf
        self.lock = threading.Lock()
        self.failed = False
        #: Open tasks with the (files, bytes) last written for each (None: never).
        self.open: dict[int, tuple[TaskState, list[tuple[int, int] | None]]] = {}
        self.stop: threading.Event | None = None

    def opened(self, state: TaskState, now: float) -> None:
        if state.key:
            with self.lock:
                self.open[id(state)] = (state, [None])

    def updated(self, state: TaskState, now: float) -> None:
        if self.failed:
            return
        if now - self.last < self.every and (self.stop is not None or not self.ticker):
            return  # too soon, and the ticker (if any) is already running: the cheap path
        entry = self.open.get(id(state))
        if entry is None:
            return
        with self.lock:
            if now - self.last < self.every:
                # too soon: the ticker writes it later (started only now, so a
                # short task with a report or two costs no thread)
                if self.ticker and self.stop is None:
                    self.stop = threading.Event()
                    threading.Thread(
                        target=self._tick, args=(self.stop,), name="wsrun-progress", daemon=True
                    ).start()
                return
            self.last = now
        self._write(state, entry[1], now)

    def _write(self, state: TaskState, written: list[tuple[int, int] | None], now: float) -> None:
        from wsrun.core.journal import JournalError

        written[0] = (state.files, state.bytes)
        try:
            self.journal.set_progress(self.run_id, state.key, state.snapshot(now).to_json())
        except JournalError:
            # the step goes on; the next write of its own record reports the journal
            self.failed = True

    def closed(self, state: TaskState, now: float) -> None:
        with self.lock:
            entry = self.open.pop(id(state), None)
            if not self.open and self.stop is not None:
                self.stop.set()
                self.stop = None
        # a task written before gets its final figures (one more write at most)
        if entry is not None and entry[1][0] is not None and not self.failed:
            if entry[1][0] != (state.files, state.bytes):
                self._write(state, entry[1], now)

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            with self.lock:
                entries = list(self.open.values())
            for state, written in entries:
                with state.lock:  # as advance holds it when it calls updated
                    if self.failed or id(state) not in self.open:
                        continue
                    if written[0] == (state.files, state.bytes):
                        continue  # nothing new: the row already says so
                    now = self.clock()
                    with self.lock:
                        self.last = now
                    self._write(state, written, now)
