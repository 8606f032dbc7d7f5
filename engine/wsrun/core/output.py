"""What a run prints: step lines as they finish, the dry-run tree of effects,
and progress bars when a person is watching a terminal."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from wsrun.core.journal import json_encoder
from wsrun.core.progress import SinkProgress, TaskState, format_line
from wsrun.core.reports import Events, RunReport, StepReport
from wsrun.core.spool import is_lazy, lazy_mapping

EFFECT_MARKS = {
    "create_file": "+ file",
    "create_dir": "+ dir ",
    "create_symlink": "+ link",
    "remove": "- rm  ",
    "move": "> move",
    "upload": "^ put ",
    "set_state": "= state",
    "publish": "@ msg ",
    "record": "# rec ",
    "run": "$ run ",
}
MAX_EFFECTS_SHOWN = 20


def report_json(data: dict[str, Any]) -> str:
    """The --json report as one string (see report_json_lines)."""
    return "\n".join(report_json_lines(data))


def report_json_lines(data: dict[str, Any]) -> Iterator[str]:
    """The --json report: indented for people, one line per step and effect, so
    the C JSON encoder does the work (json's indent= falls back to pure Python,
    seconds for 100,000 effects)."""

    dump = json_encoder(_plain, ensure_ascii=False, item_separator=", ")  # one for all

    yield "{"
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if key == "steps" and value:
            yield ('  "steps": [')
            for j, step in enumerate(value):
                head = dump({k: v for k, v in step.items() if k != "effects"})[:-1]
                effects = step.get("effects", [])
                end = "," if j < len(value) - 1 else ""
                if not effects:
                    yield (f'    {head}, "effects": []}}{end}')
                    continue
                yield (f'    {head}, "effects": [')
                last = len(effects) - 1
                for k, e in enumerate(effects):  # streamed: a spooled plan is never held
                    yield f"      {dump(e)}{',' if k < last else ''}"
                yield (f"    ]}}{end}")
            yield (f"  ]{comma}")
        else:
            yield (f"  {dump(key)}: {dump(value)}{comma}")
    yield "}"


def _plain(value: Any) -> Any:
    """A spooled output (wsrun.core.spool) as the list or dict it stands for; else str."""
    if lazy_mapping(value):
        return dict(value.items())
    if is_lazy(value):
        return list(value)
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_effect(e: dict[str, Any]) -> str:
    mark = EFFECT_MARKS.get(e["op"], e["op"])
    text = f"{mark} {e['path']}"
    if e["op"] == "create_symlink":
        text += f" -> {e.get('target')}"
    elif e["op"] == "move":
        text += f" -> {e.get('target')}"
    elif e["op"] == "run":
        text = f"{mark} {' '.join(e.get('argv', [e['path']]))}"
    elif e["op"] == "set_state" and "to" in e:
        text += f": {e.get('from') or '(new)'} -> {e['to']}"
        if e.get("substate"):
            text += f" [{e['substate']}]"
    if e.get("bytes") is not None and e["op"] in ("create_file", "remove", "move", "upload"):
        text += f"  {human_bytes(e['bytes'])}"
    if e.get("source") and e["op"] == "create_file":
        text += f"  <- {e['source']}"
    return text


def totals(steps: list[StepReport]) -> str:
    counts: dict[str, int] = {}
    size = unknown = 0
    for s in steps:
        for e in s.effects:
            counts[e["op"]] = counts.get(e["op"], 0) + 1
            if e["op"] == "create_file" and e.get("bytes"):
                size += e["bytes"]
            elif e["op"] == "create_file" and e.get("bytes") is None:
                unknown += 1  # a plan cannot know what an encoder or tar will write
    names = {
        "create_file": "file",
        "create_dir": "directory",
        "create_symlink": "symlink",
        "remove": "removal",
        "move": "move",
        "upload": "upload",
        "run": "command",
        "set_state": "state change",
        "publish": "message",
        "record": "record",
    }
    parts = []
    for op, name in names.items():
        n = counts.get(op, 0)
        if n or op in ("create_file", "create_dir"):
            plural = name if n == 1 else ("directories" if name == "directory" else name + "s")
            parts.append(
                f"{n} {plural}" + (f" ({_size(size, unknown)})" if op == "create_file" else "")
            )
    return ", ".join(parts)


def _size(size: int, unknown: int) -> str:
    if not unknown:
        return human_bytes(size)
    return f"{human_bytes(size)} and {unknown} of a size not known yet"


def print_report(report: RunReport, out: TextIO, verbose: bool = False) -> None:
    """The closing summary; for a dry run, the tree of every planned effect."""
    if report.dry_run:
        print(f"Dry run of {report.recipe} (run {report.run_id}): nothing was changed.", file=out)
        for s in report.steps:
            print(f"  {s.key:<20} {s.uses:<16} {_status_word(s, True)}", file=out)
            if s.resumed:
                continue  # done before: a resume does not do it again
            shown = s.effects if verbose else s.effects[:MAX_EFFECTS_SHOWN]
            for e in shown:
                print(f"      {format_effect(e)}", file=out)
            if len(s.effects) > len(shown):
                print(f"      ... {len(s.effects) - len(shown)} more (-v lists all)", file=out)
        # a dry run of `wsrun resume`: what the steps done before would not do again
        print(f"Would create: {totals([s for s in report.steps if not s.resumed])}", file=out)
    else:
        verb = {"ok": "nothing to change", "changed": "done", "failed": "FAILED"}[report.status]
        print(f"{report.recipe}: {verb} (run {report.run_id}); {totals(report.steps)}", file=out)
    for k, v in report.outputs.items():
        if v is not None:
            print(f"  {k}: {v}", file=out)


def _status_word(s: StepReport, dry: bool) -> str:
    if s.resumed:
        return f"{s.status} (done before resume)"
    if dry and s.status == "changed":
        return f"would change ({len(s.effects)} effects)"
    return s.status


class LineEvents(Events):
    """One plain line per finished step: for logs and pipes."""

    def __init__(self, out: TextIO, dry_run: bool, bars: RichProgress | None = None) -> None:
        self.out = out
        self.dry_run = dry_run
        self.bars = bars  # print above the live progress bars, not through them

    def step_finished(self, report: StepReport) -> None:
        if report.status == "failed":
            return  # the error line is printed once, at the end
        n = len(report.effects)
        extra = f" {n} effect{'' if n == 1 else 's'}" if n else ""
        planned = self.dry_run and report.status == "changed" and not report.resumed
        label = "planned" if planned else report.status
        line = f"[{label}] {report.key} ({report.uses}){extra} {report.seconds:.2f}s"
        if self.bars is not None:
            self.bars.bars.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.out, flush=True)


class RichProgress(SinkProgress):
    """A live line per long step on a terminal: a bar, files and bytes done
    against the plan's totals, smoothed files/s and bytes/s, and the ETA (the
    same text as a heartbeat line, see wsrun.core.progress). rich redraws it ten
    times a second from the task's counts, so a report costs nothing here and
    a stalled step's rate is seen to fall."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress as RP
        from rich.progress import ProgressColumn, TextColumn

        states: dict[Any, TaskState] = {}
        self.states = states

        class Bar(ProgressColumn):
            def render(self, task: Any) -> Any:
                from rich.progress_bar import ProgressBar

                state = states.get(task.id)
                if state is None:
                    return ProgressBar(total=None, width=40)
                total = state.total_bytes or state.total_files or None
                done = state.bytes if state.total_bytes else state.files
                return ProgressBar(total=total, completed=done, width=40)

        class Line(ProgressColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                state = states.get(task.id)
                return Text(format_line(state.snapshot(time.monotonic())) if state else "")

        self.bars = RP(
            TextColumn("{task.description}"),
            Bar(),
            Line(),
            transient=True,
            console=Console(stderr=True),
        )
        self.lock = threading.Lock()
        self.ids: dict[int, Any] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def opened(self, state: TaskState, now: float) -> None:
        with self.lock:
            task_id = self.bars.add_task(state.label, total=None)
            self.states[task_id] = state
            self.ids[id(state)] = task_id

    def closed(self, state: TaskState, now: float) -> None:
        with self.lock:
            task_id = self.ids.pop(id(state), None)
            if task_id is not None:
                self.bars.remove_task(task_id)
                self.states.pop(task_id, None)


def stream_is_terminal(stream: TextIO = sys.stderr) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
