"""Progress people can plan with (issue 15): the figures, the line, heartbeats in
logs and pipes, the journal's live copy and what -q and --json do with them.

Nothing here measures time: unit tests drive a fake clock, and runs use the
``test-progress`` plugin step (tests/fixtures/progress_step.py), which waits
for the clock to move between reports and can hold at a gate file.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import run_wsrun, write
from fixtures.progress_step import progress_plugin_env
from wsrun.core.progress import (
    Heartbeat,
    JournalProgress,
    Meter,
    Snapshot,
    TaskState,
    Tracker,
    eta_seconds,
    format_bytes,
    format_eta,
    format_line,
    format_rate,
    heartbeat_interval,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- figures and their formatting --------------------------------------------------


def test_the_line_reads_as_the_issue_asks() -> None:
    snap = Snapshot(
        label="copy",
        files=412_000,
        bytes=38_200_000_000,
        total_files=1_000_000,
        total_bytes=92_700_000_000,
        files_per_s=2130.4,
        bytes_per_s=310_000_000,
        eta=275.2,
        elapsed=100,
        updated=0,
    )
    assert format_line(snap) == (
        "412,000/1,000,000 files, 38.2/92.7 GB, 2,130 files/s, 310 MB/s, ETA 4m36s"
    )


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.2, "1s"),
        (59, "59s"),
        (60, "1m00s"),
        (276, "4m36s"),
        (3600, "1h00m"),
        (7505, "2h05m"),
        (86400 * 3 + 3600 * 4, "3d04h"),
        (None, "?"),
        (math.inf, "?"),
        (math.nan, "?"),
    ],
)
def test_eta_format(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_a_rate_of_zero_is_shown_and_gives_no_eta() -> None:
    assert format_rate(0, "files") == "0.0 files/s"
    assert format_rate(0, "bytes") == "0 B/s"
    assert eta_seconds(10, 100, 0.0) is None
    state = TaskState("copy", 10, 1000, now=0.0)
    snap = state.snapshot(5.0)  # nothing done after 5 s
    assert (snap.files_per_s, snap.bytes_per_s, snap.eta) == (0.0, 0.0, None)
    assert format_line(snap).endswith("0.0 files/s, 0 B/s, ETA ?")


@given(
    done=st.floats(allow_nan=True, allow_infinity=True),
    total=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    rate=st.floats(allow_nan=True, allow_infinity=True),
)
def test_eta_is_never_negative(done: float, total: float | None, rate: float) -> None:
    eta = eta_seconds(done, total, rate)
    assert eta is None or (math.isfinite(eta) and eta >= 0)
    text = format_eta(eta)
    assert text and not text.startswith("-")


@given(seconds=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_eta_text_never_negative(seconds: float | None) -> None:
    text = format_eta(seconds)
    assert text == "?" or (text[0].isdigit() and "-" not in text)


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100),  # seconds between reports
            st.integers(min_value=0, max_value=10**9),  # bytes in the report
            st.integers(min_value=0, max_value=1000),  # files in the report
        ),
        max_size=40,
    ),
    total_files=st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
    total_bytes=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
)
def test_snapshots_are_never_negative_whatever_the_reports(
    steps: list[tuple[float, int, int]], total_files: int | None, total_bytes: int | None
) -> None:
    now = 0.0
    state = TaskState("t", total_files, total_bytes, now)
    for dt, b, f in steps:
        now += dt
        state.advance(b, f, now)
        snap = state.snapshot(now)
        assert snap.files_per_s >= 0 and snap.bytes_per_s >= 0
        assert snap.eta is None or snap.eta >= 0
        assert snap.fraction is None or 0 <= snap.fraction <= 1
        assert "ETA -" not in format_line(snap)


def test_rates_are_smoothed_and_fall_when_a_step_stalls() -> None:
    meter = Meter(0.0)
    files = 0
    for second in range(1, 31):  # a steady 100 files/s
        files += 100
        meter.update(float(second), files, files * 1000)
    assert meter.rates(30.0, files, files * 1000) == pytest.approx((100.0, 100_000.0))
    # one burst of 1,000 files in a second moves the average, not to 1,000/s
    files += 1000
    meter.update(31.0, files, files * 1000)
    burst = meter.rates(31.0, files, files * 1000)[0]
    assert 100 < burst < 400
    # then nothing for a minute: the rate falls towards 0, the ETA grows
    quiet = [meter.rates(31.0 + s, files, files * 1000)[0] for s in (5, 20, 60)]
    assert quiet[0] > quiet[1] > quiet[2] >= 0


def test_format_bytes_units() -> None:
    assert [format_bytes(n) for n in (0, 999, 1000, 38_240_000, 310_000_000, 2e15)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "38.2 MB",
        "310 MB",
        "2.0 PB",
    ]


# ---- heartbeats ---------------------------------------------------------------------


def test_heartbeat_prints_a_line_every_interval_of_the_clock() -> None:
    clock, out = FakeClock(), io.StringIO()
    beat = Heartbeat(out, 5.0, clock=clock, ticker=False)
    task = Tracker([beat], key="copy", label="copy", clock=clock).task(
        "copy", total_bytes=20_000, total_files=20
    )
    for _ in range(20):  # one file a second for 20 s
        clock.now += 1
        task.advance(bytes=1000, files=1)
    task.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "copy: 5/20 files",
        "copy: 10/20 files",
        "copy: 15/20 files",
        "copy: 20/20 files",
    ]
    assert lines[0] == "copy: 5/20 files, 5.0/20.0 kB, 1.0 files/s, 1.0 kB/s, ETA 15s"


def test_tracker_names_the_step_and_the_task() -> None:
    clock, out = FakeClock(), io.StringIO()
    beat = Heartbeat(out, 1.0, clock=clock, ticker=False)
    task = Tracker([beat], key="sums", label="sums", clock=clock).task("hash", total_files=2)
    clock.now += 2
    task.advance(files=1)
    task.close()
    assert out.getvalue().startswith("sums (hash): 1/2 files, 0 B, ")


@pytest.mark.parametrize(
    "env, sets, expected",
    [
        ({}, {}, 5.0),
        ({"WSRUN_HEARTBEAT": "0.5"}, {}, 0.5),
        ({"WSRUN_HEARTBEAT": "2s"}, {}, 2.0),
        ({"WSRUN_HEARTBEAT": "off"}, {}, None),
        ({"WSRUN_HEARTBEAT": "0"}, {}, None),
        ({"WSRUN_PROGRESS_HEARTBEAT": "7"}, {}, 7.0),
        ({"WSRUN_HEARTBEAT": "3", "WSRUN_PROGRESS_HEARTBEAT": "7"}, {}, 3.0),
        ({"WSRUN_HEARTBEAT": "3"}, {"wsrun.progress.heartbeat": "off"}, None),
    ],
)
def test_heartbeat_interval_sources(
    env: dict[str, str], sets: dict[str, str], expected: float | None
) -> None:
    from wsrun.core.settings import Settings

    settings = Settings(env=env, overrides=sets)
    assert heartbeat_interval(settings, env) == expected


def test_a_bad_heartbeat_interval_names_where_it_came_from() -> None:
    with pytest.raises(ValueError, match=r"\$WSRUN_HEARTBEAT: 'soon' is not a number"):
        heartbeat_interval(None, {"WSRUN_HEARTBEAT": "soon"})
    with pytest.raises(ValueError, match="is not a number of seconds"):
        heartbeat_interval(None, {"WSRUN_HEARTBEAT": "-1"})


# ---- the journal's copy -------------------------------------------------------------


def test_a_million_updates_make_a_bounded_number_of_journal_writes(tmp_path: Path) -> None:
    from wsrun.core.journal import Journal

    journal = Journal(home=str(tmp_path))
    journal.start_run("r1", "demo", "demo.yaml", {}, {}, False, str(tmp_path))
    journal.start_step("r1", "copy", 1, "copy", planned=[])
    writes: list[dict] = []
    real = journal.set_progress

    def counting(run_id: str, key: str, progress: dict) -> None:
        writes.append(progress)
        real(run_id, key, progress)

    journal.set_progress = counting  # type: ignore[method-assign]
    clock = FakeClock()
    sink = JournalProgress(journal, "r1", ticker=False)
    task = Tracker([sink], key="copy", label="copy", clock=clock).task(
        "copy", total_bytes=10**9, total_files=10**6
    )
    for _ in range(10**6):  # a million files in 20 s of the fake clock
        clock.now += 20e-6
        task.advance(bytes=1000, files=1)
    task.close()
    # at most one write a second of the run (21 here), plus the figures at the end
    assert 15 <= len(writes) <= 22
    assert writes[-1]["files"] == 10**6 and writes[-1]["fraction"] == 1.0
    [step] = journal.steps("r1")
    assert step["progress"]["files"] == 10**6
    assert step["progress"]["line"].startswith("1,000,000/1,000,000 files, 1.0/1.0 GB")
    rows = journal._query("SELECT count(*) FROM {steps} WHERE run_id='r1'")
    assert rows == [(1,)]  # one row, updated in place
    journal.close()


def test_the_throttle_is_per_run_not_per_task(tmp_path: Path) -> None:
    class Counting:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def set_progress(self, run_id: str, key: str, progress: dict) -> None:
            self.calls.append(key)

    journal, clock = Counting(), FakeClock()
    sink = JournalProgress(journal, "r1", ticker=False)
    tasks = [
        Tracker([sink], key=f"s{i}", label=f"s{i}", clock=clock).task("copy", total_files=100)
        for i in range(50)
    ]
    for _ in range(100):  # 50 parallel tasks, 100 reports each, in 10 s
        clock.now += 0.1
        for t in tasks:
            t.advance(files=1)
    assert len(journal.calls) <= 11
    for t in tasks:  # tasks never written get no final write either
        t.close()
    assert len(journal.calls) <= 22


def test_a_new_attempt_of_a_step_starts_without_the_old_progress(
    tmp_path: Path, journal_url: str | None
) -> None:
    """On both journals: progress lands in the step's row and a new attempt clears it."""
    from wsrun.core.journal import Journal

    journal = Journal(home=str(tmp_path), url=journal_url)
    journal.start_run("r1", "demo", "demo.yaml", {}, {}, False, str(tmp_path))
    journal.start_step("r1", "copy", 1, "copy", planned=[])
    journal.set_progress("r1", "copy", {"files": 3})
    assert journal.steps("r1")[0]["progress"] == {"files": 3}
    journal.start_step("r1", "copy", 1, "copy", planned=[])  # resumed or retried
    journal.flush()
    assert journal.steps("r1")[0]["progress"] is None
    journal.close()


def test_a_failed_progress_write_loses_none_of_the_runs_records(tmp_path: Path) -> None:
    """The journal fails under a progress write (disk full, locked): the step's
    own queued record stays queued for the run's next write, which reports the
    failure and stops the run as before; progress stops writing, the step goes on."""
    from wsrun.core.journal import Journal, JournalError

    journal = Journal(home=str(tmp_path))
    journal.start_run("r1", "demo", "demo.yaml", {}, {}, False, str(tmp_path))
    journal.start_step("r1", "copy", 1, "copy")  # queued, not yet committed
    real, calls = journal.tables.write, []

    def failing(statements):
        calls.append(len(statements))
        raise JournalError("journal x: database or disk is full")

    journal.tables.write = failing  # type: ignore[method-assign]
    clock = FakeClock()
    task = Tracker([JournalProgress(journal, "r1", ticker=False)], key="copy", clock=clock).task(
        "copy", total_files=3
    )
    for _ in range(3):
        clock.now += 2
        task.advance(files=1)  # no exception reaches the step
    task.close()
    assert calls == [2]  # one attempt (the queued INSERT and the update), then no more
    journal.tables.write = real  # type: ignore[method-assign]
    journal.flush()
    [step] = journal.steps("r1")
    assert (step["key"], step["status"], step["progress"]) == ("copy", "running", None)
    journal.close()


# ---- runs: heartbeats, -q, --json, runs show ----------------------------------------


def _recipe(tmp_path: Path, **params: object) -> Path:
    fields = ", ".join(f"{k}: {json.dumps(v)}" for k, v in params.items())
    return write(
        tmp_path / "progress.yaml",
        f"recipe: progress\nsteps:\n  - id: work\n    uses: test-progress\n    with: {{{fields}}}\n",
    )


def test_heartbeats_appear_in_the_output_of_a_run_into_a_pipe(tmp_path: Path) -> None:
    env = {**progress_plugin_env(tmp_path), "WSRUN_HEARTBEAT": "1e-12"}
    recipe = _recipe(tmp_path, files=5, bytes_each=2_000_000)
    r = run_wsrun(recipe, cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    beats = [line for line in r.err.splitlines() if line.startswith("work (test-progress): ")]
    counts = [line.split(",")[0].removeprefix("work (test-progress): ") for line in beats]
    # a line for each report (the clock moved past the tiny interval each time), in order
    assert [c for i, c in enumerate(counts) if c not in counts[:i]] == [
        f"{n}/5 files" for n in range(1, 6)
    ]
    assert all("/10.0 MB, " in line and " files/s, " in line and ", ETA " in line for line in beats)
    assert "[ok] work (test-progress)" in r.err


def test_quiet_and_json_runs_have_no_heartbeats(tmp_path: Path) -> None:
    env = {**progress_plugin_env(tmp_path), "WSRUN_HEARTBEAT": "1e-12"}
    recipe = _recipe(tmp_path, files=5)
    r = run_wsrun(recipe, "-q", cwd=tmp_path, env=env)
    assert (r.code, r.out, r.err) == (0, "", "")
    r = run_wsrun(recipe, "--json", cwd=tmp_path, env=env)
    assert r.code == 0 and r.err == ""
    assert json.loads(r.out)["status"] == "ok"  # stdout is the JSON alone


def test_heartbeats_can_be_turned_off(tmp_path: Path) -> None:
    env = {**progress_plugin_env(tmp_path), "WSRUN_HEARTBEAT": "1e-12"}
    recipe = _recipe(tmp_path, files=5)
    r = run_wsrun(recipe, "--set", "wsrun.progress.heartbeat=off", cwd=tmp_path, env=env)
    assert r.code == 0 and "files/s" not in r.err and "[ok] work" in r.err
    r = run_wsrun(recipe, cwd=tmp_path, env={**env, "WSRUN_HEARTBEAT": "soon"})
    assert r.code == 2
    assert r.err.strip() == "progress: $WSRUN_HEARTBEAT: 'soon' is not a number of seconds (or off)"


def _read_until(stream, wanted, limit: int = 10_000) -> list[str]:
    """Lines of ``stream`` until ``wanted(lines)`` holds (or it ends)."""
    lines: list[str] = []
    while len(lines) < limit:
        line = stream.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if wanted(lines):
            break
    return lines


def _wait_for_progress_files(files: int) -> str:
    """The running run's id, once its journal shows ``files`` files done (the
    journal is written at most once a second: this waits for that, up to a minute)."""
    import time

    from wsrun.core.journal import Journal

    journal = Journal()
    try:
        deadline = time.monotonic() + 60
        while True:
            runs = journal.runs(1)
            steps = journal.steps(runs[0].id) if runs else []
            if steps and (steps[0]["progress"] or {}).get("files") == files:
                return runs[0].id
            assert time.monotonic() < deadline, f"the journal never showed {files} files: {steps}"
            time.sleep(0.05)
    finally:
        journal.close()


def test_a_stalled_step_still_beats_and_runs_show_has_its_progress(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    recipe = _recipe(tmp_path, files=5, bytes_each=1000, gate=str(gate), hold_after=2)
    env = {**os.environ, **progress_plugin_env(tmp_path), "WSRUN_HEARTBEAT": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stalled = "work (test-progress): 2/5 files, 2.0/5.0 kB"
        lines = _read_until(proc.stderr, lambda ls: sum(stalled in x for x in ls) >= 3)
        # held at the gate, no report comes: the ticker keeps the log told
        assert sum(stalled in line for line in lines) >= 3, lines
        run_id = _wait_for_progress_files(2)
        shown = run_wsrun("runs", "show", run_id, cwd=tmp_path)
        assert "status running" in shown.out
        assert "progress work (test-progress): 2/5 files, 2.0/5.0 kB, " in shown.out
        assert "ETA " in shown.out and "ago)" in shown.out
        data = json.loads(run_wsrun("runs", "show", run_id, "--json", cwd=tmp_path).out)
        progress = data["steps"][0]["progress"]
        assert (progress["files"], progress["total_files"], progress["fraction"]) == (2, 5, 0.4)
        gate.write_text("open")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
        proc.wait()
    shown = run_wsrun("runs", "show", run_id, cwd=tmp_path)
    assert "progress work" not in shown.out  # a finished step shows its outcome, not figures


# ---- every long step reports against the plan's totals ------------------------------


class Recording:
    """A plain Progress (as a program embedding the Runner may pass) that records."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []

    def task(self, description: str, total_bytes=None, total_files=None):
        record = {
            "description": description,
            "total_bytes": total_bytes,
            "total_files": total_files,
            "bytes": 0,
            "files": 0,
            "closed": False,
        }
        self.tasks.append(record)

        class Task:
            def advance(self, bytes: int = 0, files: int = 0) -> None:
                record["bytes"] += bytes
                record["files"] += files

            def close(self) -> None:
                record["closed"] = True

        return Task()


def _run_recording(tmp_path: Path, text: str) -> Recording:
    from wsrun.core.journal import Journal
    from wsrun.core.runner import Runner
    from wsrun.core.settings import Settings
    from wsrun.core.validate import load_valid

    path = write(tmp_path / "steps.yaml", text)
    recording = Recording()
    runner = Runner(
        load_valid(str(path)),
        {},
        Settings(),
        journal=Journal(),
        progress=recording,
        workdir=str(tmp_path),
    )
    report = runner.run()
    assert report.status == "changed", report.error
    return recording


def test_long_local_steps_report_files_and_bytes_against_their_totals(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(12):
        write(src / f"d{i % 3}" / f"f{i}.dat", "x" * (1000 + i))
    size = sum(1000 + i for i in range(12))
    recording = _run_recording(
        tmp_path,
        f"""
        recipe: all
        steps:
          - {{id: copy, uses: copy, with: {{sources: "{src}", to: "{tmp_path}/out"}}}}
          - {{id: sums, uses: checksum, with: {{paths: "{tmp_path}/out", to: "{tmp_path}/SUMS"}}}}
          - {{id: list, uses: manifest, with: {{root: "{tmp_path}/out", to: "{tmp_path}/m.json"}}}}
          - {{id: pack, uses: tar, with: {{source: "{tmp_path}/out", to: "{tmp_path}/o.tar"}}}}
          - {{id: unpack, uses: untar, with: {{source: "{tmp_path}/o.tar", to: "{tmp_path}/un"}}}}
          - {{id: sync, uses: rsync, with: {{source: "{src}/", to: "{tmp_path}/synced"}}}}
          - {{id: again, uses: copy, with: {{sources: "{src}", to: "{tmp_path}/out", checksum: sha256}}}}
        """,
    )
    by_label = {t["description"]: t for t in recording.tasks}
    for label in ("copy", "sums (hash)", "list (hash)", "pack (tar)", "sync (rsync)"):
        task = by_label[label]
        assert (task["files"], task["total_files"]) == (12, 12), task
        assert (task["bytes"], task["total_bytes"]) == (size, size), task
        assert task["closed"]
    # a copy whose files are all in place still hashes them for its checksums
    again = by_label["again (hash)"]
    assert (again["files"], again["total_files"], again["bytes"]) == (12, 12, size)
    unpack = by_label["unpack (untar)"]  # untar also counts the directories it makes
    assert unpack["files"] == unpack["total_files"] >= 12
    assert unpack["bytes"] == unpack["total_bytes"] == size


def test_ingest_and_image_derivative_report_against_their_totals(tmp_path: Path) -> None:
    from fixtures import staging
    from fixtures.jp2 import need_opj_decompress
    from test_image_derivative import rgb_tiff

    need_opj_decompress()
    manifest = staging.calibration(tmp_path / "cal")
    stored = sum(p.stat().st_size for p in (tmp_path / "cal").iterdir() if p.suffix != ".json")
    source = rgb_tiff(tmp_path / "scan.tif")
    recording = _run_recording(
        tmp_path,
        f"""
        recipe: archive
        steps:
          - {{id: store, uses: ingest, with: {{manifest: "{manifest}"}}}}
          - id: derive
            uses: image-derivative
            with:
              source: "{source}"
              derivatives: [{{to: m.jp2, lossless: true}}, {{to: a.jpg, max_size: 40}}]
        """,
    )
    by_label = {t["description"]: t for t in recording.tasks}
    ingest = by_label["store (ingest)"]
    assert ingest["files"] == ingest["total_files"] == 3
    assert ingest["bytes"] == ingest["total_bytes"] == stored
    derive = by_label["derive (image-derivative)"]
    assert derive["files"] == derive["total_files"] == 2
    assert derive["bytes"] == derive["total_bytes"] == 2 * source.stat().st_size
    assert all(t["closed"] for t in recording.tasks)


def test_s3_upload_and_download_report_against_their_totals(
    tmp_path: Path, s3, bucket: str
) -> None:
    from test_s3 import data_tree

    files = data_tree(tmp_path)
    size = sum(len(c) for c in files.values())
    recording = _run_recording(
        tmp_path,
        f"""
        recipe: s3
        steps:
          - id: up
            uses: s3-upload
            with: {{sources: data, base: ., to: "s3://{bucket}/coll", endpoint_url: "{s3.endpoint}", part_size: 5MiB}}
          - id: down
            uses: s3-download
            with: {{sources: "s3://{bucket}/coll/data/", to: restored, endpoint_url: "{s3.endpoint}"}}
        """,
    )
    by_label = {t["description"]: t for t in recording.tasks}
    for label in ("up (upload)", "down (download)"):
        task = by_label[label]
        assert task["files"] == task["total_files"] == len(files), task
        assert task["bytes"] == task["total_bytes"] == size, task
        assert task["closed"]


def test_a_terminal_gets_a_live_line_per_step(tmp_path: Path) -> None:
    """Under a pseudo-terminal the run draws rich's live line (bar, files,
    bytes, rates, ETA) instead of heartbeats; the gate holds the step until
    the line has been seen."""
    import pty
    import re
    import select
    import time

    gate = tmp_path / "gate"
    recipe = _recipe(tmp_path, files=5, bytes_each=1000, gate=str(gate), hold_after=2)
    env = {**os.environ, **progress_plugin_env(tmp_path), "WSRUN_HEARTBEAT": "1e-12"}
    env.update({"TERM": "xterm", "COLUMNS": "200"})
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    seen, text = b"", ""
    try:
        deadline = time.monotonic() + 60
        while "2/5 files, 2.0/5.0 kB, " not in text:
            assert time.monotonic() < deadline, text[-600:]
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 65536)
                text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
        gate.write_text("open")
        assert proc.wait(120) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert "work (test-progress)" in text and " files/s, " in text and "ETA " in text
    assert "━" in text  # the bar
    assert "work (test-progress): " not in text  # no heartbeat lines on a terminal


def test_removals_report_the_files_they_remove(tmp_path: Path) -> None:
    """A tree removed by the remove step, copy's `delete` and an atomic group
    replacing its destination shows its files going (a million take a while)."""
    for i in range(600):
        write(tmp_path / "big" / f"d{i % 4}" / f"f{i}", "x")
    for i in range(300):
        write(tmp_path / "mirror" / "stale" / f"s{i}", "x")
    write(tmp_path / "src" / "a", "a")
    group = f"""
          - id: out
            group: {{destination: "{tmp_path}/dest", replace: true, marker: a}}
            steps:
              - {{id: files, uses: copy, with: {{sources: "{tmp_path}/src/a", to: "{tmp_path}/dest"}}}}
        """
    _run_recording(tmp_path, "recipe: first\nsteps:" + group)
    for i in range(400):
        write(tmp_path / "dest" / "old" / f"o{i}", "x")
    write(tmp_path / "src" / "a", "changed")
    recording = _run_recording(
        tmp_path,
        f"""
        recipe: removals
        steps:
          - {{id: drop, uses: remove, with: {{path: "{tmp_path}/big"}}}}
          - {{id: sync, uses: copy, with: {{sources: "{tmp_path}/src/a", to: "{tmp_path}/mirror", delete: true}}}}
        """
        + group,
    )
    by_label = {t["description"]: t for t in recording.tasks}
    drop = by_label["drop (remove)"]
    assert drop["files"] == drop["total_files"] == 600 and drop["closed"]
    delete = by_label["sync (delete)"]
    assert delete["files"] == 300 and delete["closed"]
    replace = by_label["out (replace)"]
    assert replace["files"] == 401 and replace["closed"]  # the old a and its 400
    assert not (tmp_path / "big").exists() and not (tmp_path / "mirror" / "stale").exists()
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["a"]
