"""Runs: the journal's recent runs, and one run's steps, effects, outputs and log.

A run page polls its live fragment while the run is running (htmx, no
full-page reload) and stops once the run has finished.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsrun.core.journal import RunRecord
from wsrun.core.masking import printable_data
from wsrun.web.common import Paging, Table, api, not_found, page_of, render, sources

#: How many recent runs the list pages through and filters.
RECENT = 5000
#: Effects a run page lists at a time (over all its steps).
RUN_PAGE_EFFECTS = 100
_NESTED = re.compile(r"[\[/]")
COLUMNS = ("id", "recipe", "inputs", "status", "started", "duration")
#: Effects of each step the run API returns at once, by default and at most.
EFFECTS_PAGE = 500
EFFECTS_PAGE_MAX = 5000


def run_row(r: RunRecord) -> dict[str, Any]:
    """A run as the list and the API show it."""
    end = r.ended if r.ended else (time.time() if r.shown_status == "running" else None)
    return {
        "id": r.id,
        "recipe": r.recipe,
        "recipe_path": r.recipe_path,
        "inputs": printable_data(r.inputs),  # a path's exact bytes, as text
        "status": r.shown_status,
        "dry_run": r.dry_run,
        "started": r.started,
        "ended": r.ended,
        "duration": None if end is None else round(end - r.started, 3),
        "outputs": r.outputs,
        "error": r.error,
    }


def runs_table(request: Request) -> Table:
    """A page of the most recent runs (newest first), filtered by ``q``."""
    records = sources(request).journal.runs(RECENT)
    return page_of("runs", COLUMNS, [run_row(r) for r in records], Paging.of(request))


def effects_paging(request: Request) -> tuple[int, int]:
    """(page from 1, effects a page) of ``?effects_page=&effects_size=``: a run
    page shows a page of each step's effects (``effect_count`` says how many)."""
    try:
        page = max(1, int(request.query_params.get("effects_page", 1)))
        size = int(request.query_params.get("effects_size", EFFECTS_PAGE))
    except ValueError:
        page, size = 1, EFFECTS_PAGE
    return page, min(max(1, size), EFFECTS_PAGE_MAX)


def run_detail(request: Request) -> dict[str, Any]:
    """A run with its steps, a page of each step's effects, and a log; each
    effect gets the checksum its step reported for that path
    (``outputs.checksums``) or carried itself."""
    run_id = request.path_params["run_id"]
    journal = sources(request).journal
    record = journal.run(run_id)
    if record is None or record.id != run_id:
        raise not_found(f"no run '{run_id}'")
    page, size = effects_paging(request)
    # in execution order: a called recipe's steps number themselves from 1 again
    steps = sorted(journal.steps(record.id, effects_limit=0), key=lambda s: s["started"])
    now = time.time()
    for step in steps:
        live_progress(step, now)
        if step["effect_count"]:
            step["effects"] = journal.effects(record.id, step["key"], (page - 1) * size, size)
        with_checksums(step, step["effects"])
    return {
        **run_row(record),
        "steps": steps,
        "effects_page": page,
        "effects_size": size,
        "log": log_lines(record, steps),
    }


def live_progress(step: dict[str, Any], now: float) -> None:
    """Keep a step's progress (files, bytes, rates, ETA: wsrun.core.progress) only
    while it runs, with ``progress_age``, the seconds since its last report."""
    progress = step.get("progress")
    if step["status"] != "running" or not isinstance(progress, dict):
        step["progress"] = None
        return
    step["progress_age"] = round(max(0.0, now - float(progress.get("updated") or now)), 1)


def with_checksums(step: dict[str, Any], effects: list[dict[str, Any]]) -> None:
    """Give each effect the checksum its step reported for that path
    (``outputs.checksums``) or carried itself."""
    outputs = step["outputs"] if isinstance(step["outputs"], dict) else {}
    sums = outputs.get("checksums") if isinstance(outputs.get("checksums"), dict) else {}
    for effect in effects:
        effect["checksum"] = (
            sums.get(effect.get("path")) or effect.get("sha256") or effect.get("md5")
        )


def log_lines(record: RunRecord, steps: list[dict[str, Any]]) -> list[str]:
    """The run's story from its journal records, one line per event in time order."""
    events: list[tuple[float, str]] = [
        (record.started, f"run {record.id} of {record.recipe} started")
    ]
    for s in steps:
        events.append((s["started"], f"step {s['key']} ({s['uses']}) started"))
        if s["ended"]:
            took = s["ended"] - s["started"]
            line = f"step {s['key']} {s['status']} in {took:.2f} s, {s['effect_count']} effects"
            if s["error"]:
                line += f": {s['error']}"
            events.append((s["ended"], line))
    if record.ended:
        line = f"run {record.shown_status}"
        if record.error:
            line += f": {record.error}"
        events.append((record.ended, line))
    events.sort(key=lambda e: e[0])
    return [
        f"{time.strftime('%H:%M:%S', time.localtime(t))}.{int(t % 1 * 1000):03d}  {m}"
        for t, m in events
    ]


async def runs_page(request: Request) -> Response:
    return render(request, "runs.html", table=runs_table(request))


async def runs_fragment(request: Request) -> Response:
    return render(request, "runs_table.html", table=runs_table(request))


async def runs_api(request: Request) -> Response:
    """Recent runs, newest first.
    ---
    summary: Recent runs (page, size, q filter)
    responses:
      200: {description: "A page of runs: rows, total, page, pages"}
    """
    return api(runs_table(request).to_json())


def page_view(request: Request, run: dict[str, Any]) -> dict[str, Any]:
    """What a run page shows besides the run: the steps grouped under their
    top-level step (a loop's iterations and a called recipe's steps collapse
    into it), and one page of the effects of the steps that did the work (a
    loop or a called recipe reports its inner steps' effects again)."""
    keys = [s["key"] for s in run["steps"]]
    containers = {k[: m.start()] for k in keys for m in _NESTED.finditer(k)}
    groups: dict[str, dict[str, Any]] = {}
    for s in run["steps"]:
        root = _NESTED.split(s["key"], maxsplit=1)[0]
        group = groups.setdefault(root, {"step": None, "inner": []})
        if s["key"] == root:
            group["step"] = s
        else:
            group["inner"].append(s)
    # One page over the effects of every step that did the work, read from the
    # journal a step's slice at a time (a step may hold millions).
    workers = [s for s in run["steps"] if s["key"] not in containers and s["effect_count"]]
    total = sum(s["effect_count"] for s in workers)
    pages = max(1, -(-total // RUN_PAGE_EFFECTS))
    try:
        page = min(max(1, int(request.query_params.get("effects", "1"))), pages)
    except ValueError:
        page = 1
    start, effects = (page - 1) * RUN_PAGE_EFFECTS, []
    journal = sources(request).journal
    for s in workers:
        if start >= s["effect_count"]:
            start -= s["effect_count"]
            continue
        want = RUN_PAGE_EFFECTS - len(effects)
        chunk = journal.effects(run["id"], s["key"], start, want)
        with_checksums(s, chunk)
        effects += [(s["key"], e) for e in chunk]
        start = 0
        if len(effects) >= RUN_PAGE_EFFECTS:
            break
    return {
        "groups": list(groups.values()),
        "effects": effects,
        "effects_total": total,
        "effects_page": page,
        "effects_pages": pages,
    }


async def run_page(request: Request) -> Response:
    run = run_detail(request)
    return render(request, "run.html", run=run, view=page_view(request, run))


async def run_fragment(request: Request) -> Response:
    run = run_detail(request)
    return render(request, "run_live.html", run=run, view=page_view(request, run))


async def run_api(request: Request) -> Response:
    """One run.
    ---
    summary: One run with its steps, a page of each step's effects (effects_page, effects_size), outputs and log
    responses:
      200: {description: The run}
      404: {description: No such run}
    """
    return api(run_detail(request))


routes = [
    Route("/runs", runs_page),
    Route("/runs/table", runs_fragment),
    Route("/runs/{run_id}", run_page),
    Route("/runs/{run_id}/live", run_fragment),
    Route("/api/runs", runs_api),
    Route("/api/runs/{run_id}", run_api),
]
