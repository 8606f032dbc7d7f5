"""What a run prints: step lines as they finish, the dry-run tree of effects,
and progress bars when a person is watching a terminal."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from wsrun.runner import Events, RunReport, StepReport
from wsrun.spool import is_lazy, lazy_mapping
from wsrun.step import Progress, ProgressTask

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

    dump = json.JSONEncoder(
        default=_plain, ensure_ascii=False
    ).encode  # one encoder: dumps() makes one per call

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
    """A spooled output (wsrun.spool) as the list or dict it stands for; else str."""
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
            shown = s.effects if verbose else s.effects[:MAX_EFFECTS_SHOWN]
            for e in shown:
                print(f"      {format_effect(e)}", file=out)
            if len(s.effects) > len(shown):
                print(f"      ... {len(s.effects) - len(shown)} more (-v lists all)", file=out)
        print(f"Would create: {totals(report.steps)}", file=out)
    else:
        verb = {"ok": "nothing to change", "changed": "done", "failed": "FAILED"}[report.status]
        print(f"{report.recipe}: {verb} (run {report.run_id}); {totals(report.steps)}", file=out)
    for k, v in report.outputs.items():
        if v is not None:
            print(f"  {k}: {v}", file=out)


def _status_word(s: StepReport, dry: bool) -> str:
    if dry and s.status == "changed":
        return f"would change ({len(s.effects)} effects)"
    if s.resumed:
        return f"{s.status} (done before resume)"
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
        label = "planned" if self.dry_run and report.status == "changed" else report.status
        line = f"[{label}] {report.key} ({report.uses}){extra} {report.seconds:.2f}s"
        if self.bars is not None:
            self.bars.bars.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.out, flush=True)


class RichProgress(Progress):
    """Progress bars with bytes, files, rate and ETA on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RP

        self.bars = RP(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]} files"),
            TimeRemainingColumn(),
            transient=True,
            console=Console(stderr=True),
        )
        self.lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def task(
        self, description: str, total_bytes: int | None = None, total_files: int | None = None
    ) -> ProgressTask:
        task_id = self.bars.add_task(description, total=total_bytes, files=0)
        bars = self.bars
        lock = self.lock

        class Task:
            files = 0

            def advance(self, bytes: int = 0, files: int = 0) -> None:
                with lock:
                    self.files += files
                    bars.update(
                        task_id,
                        advance=bytes,
                        files=f"{self.files}/{total_files}" if total_files else self.files,
                    )

            def close(self) -> None:
                bars.remove_task(task_id)

        return Task()


def stream_is_terminal(stream: TextIO = sys.stderr) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
