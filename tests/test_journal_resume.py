"""The run journal: concurrent runs, listing, and resume after a crash, on the
embedded SQLite journal and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_wsrun, write
from wsrun.core.journal import Journal

# Every test once on the default journal and once on PostgreSQL (conftest.journal_url).
pytestmark = pytest.mark.usefixtures("journal_url")

COPY_RECIPE = """
recipe: bigcopy
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
steps:
  - id: copy
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}", checksum: sha256, workers: 1}
  - id: sums
    uses: checksum
    with: {paths: "{{ inputs.dest }}", to: "{{ inputs.dest }}/../SHA256SUMS"}
"""


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        d = root / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(hashlib.sha256(str(i).encode()).digest() * (size // 32))


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("journal_url", ["sqlite"], indirect=True)  # PostgreSQL: the test below
def test_sigkill_mid_copy_then_resume(tmp_path: Path, wsrun_home: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 2000, 32 * 1024)
    recipe = write(tmp_path / "r.yaml", COPY_RECIPE)
    dest = tmp_path / "out" / "dest"
    env = {**os.environ, "WSRUN_HOME": str(wsrun_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe), str(src), str(dest), "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        copied = sum(1 for _ in dest.rglob("*.bin")) if dest.exists() else 0
        if copied >= 50:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    copied = sum(1 for _ in dest.rglob("*.bin"))
    assert 0 < copied < 2000, "the copy must be interrupted part way for this test to mean anything"

    runs = run_wsrun("runs", "--json", cwd=tmp_path, env={"WSRUN_HOME": str(wsrun_home)})
    run = json.loads(runs.out)[0]
    assert run["status"] == "interrupted"
    r = run_wsrun("resume", run["id"], cwd=tmp_path, env={"WSRUN_HOME": str(wsrun_home)})
    assert r.code == 0, r.err
    assert digest_tree(dest / "src") == digest_tree(src)
    assert not [p for p in dest.rglob("*") if p.name.endswith(".wsrun-tmp")]
    assert (
        subprocess.run(
            ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path / "out"
        ).returncode
        == 0
    )
    shown = json.loads(
        run_wsrun(
            "runs", "show", run["id"], "--json", cwd=tmp_path, env={"WSRUN_HOME": str(wsrun_home)}
        ).out
    )
    assert shown["status"] == "changed"
    assert [s["status"] for s in shown["steps"]] == ["changed", "changed"]


def test_resume_skips_finished_steps(cli, tmp_path: Path) -> None:
    marker = tmp_path / "flag"
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: twostep
        steps:
          - id: first
            uses: mkdir
            with: {{path: "{tmp_path}/made"}}
          - id: second
            uses: copy
            with: {{sources: "{marker}", to: "{tmp_path}/dest"}}
    """,
    )
    r = cli(recipe, "--json")
    assert r.code == 1 and "no such file or directory" in r.err.lower() and str(marker) in r.err
    run_id = json.loads(r.out)["run_id"]
    (tmp_path / "made").rmdir()  # proves the first step is not run again
    marker.write_text("now it exists")
    r = cli("resume", run_id, "--json")
    assert r.code == 0, r.err
    steps = json.loads(r.out)["steps"]
    assert steps[0]["resumed"] and steps[0]["status"] == "changed"
    assert steps[1]["status"] == "changed"
    assert not (tmp_path / "made").exists()
    assert (tmp_path / "dest" / "flag").read_text() == "now it exists"
    r = cli("resume", run_id)
    assert r.code == 0 and "nothing to resume" in r.out


def test_concurrent_runs_share_the_journal(
    tmp_path: Path, wsrun_home: Path, journal_url: str | None
) -> None:
    steps = "\n".join(f"  - {{id: s{i}, uses: noop, with: {{i: {i}}}}}" for i in range(300))
    recipe = tmp_path / "many.yaml"
    recipe.write_text(f"recipe: many\nsteps:\n{steps}\n")
    env = {**os.environ, "WSRUN_HOME": str(wsrun_home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wsrun", str(recipe), "-q"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    journal = Journal()
    runs = journal.runs()
    assert len(runs) == 3 and {r.status for r in runs} == {"ok"}
    for r in runs:
        steps = journal.steps(r.id)
        assert [s["key"] for s in steps] == [f"s{i}" for i in range(300)]
        assert {s["status"] for s in steps} == {"ok"}
    if journal_url is None:
        db = journal.tables.db  # type: ignore[union-attr]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_runs_listing_and_show(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: listed
        steps:
          - {id: one, uses: noop, with: {a: 1}}
    """,
    )
    assert cli(recipe).code == 0
    assert cli(recipe, "--dry-run").code == 0
    r = cli("runs")
    lines = r.out.strip().splitlines()
    assert len(lines) == 2 and "(dry run)" in lines[0] and "listed" in lines[1]
    run_id = lines[1].split()[0]
    r = cli("runs", "show", run_id[-8:])
    assert r.code == 0 and "one" in r.out and "noop" in r.out
    assert cli("runs", "show", "nonexistent").code == 2


LOOP = """
recipe: looped
inputs:
  dest: {type: path, positional: true}
steps:
  - id: each
    uses: copy
    for_each: [a, b, c]
    with: {sources: "{{ run.recipe_dir }}/{{ item }}.txt", to: "{{ inputs.dest }}/{{ item }}"}
"""


def test_for_each_iterations_end_in_the_journal(cli, tmp_path: Path) -> None:
    """Every iteration of a loop of a plain step type ends finished (or failed) in
    the journal; none is left running once the run is over."""
    recipe = write(tmp_path / "loop.yaml", LOOP)
    for name in "abc":
        write(tmp_path / f"{name}.txt", name)
    assert cli(recipe, tmp_path / "out").code == 0
    run_id = json.loads(cli("runs", "--json").out)[0]["id"]
    steps = {s["key"]: s for s in json.loads(cli("runs", "show", run_id, "--json").out)["steps"]}
    assert {k: s["status"] for k, s in steps.items()} == {
        "each": "changed",
        "each[0]": "changed",
        "each[1]": "changed",
        "each[2]": "changed",
    }
    assert all(s["ended"] for s in steps.values())
    assert [e["path"] for e in steps["each[1]"]["effects"]][-1] == f"{tmp_path}/out/b/b.txt"
    shown = cli("runs", "show", run_id).out
    assert "running" not in shown and shown.count(" changed ") == 4

    (tmp_path / "b.txt").unlink()  # the second iteration now fails
    assert cli(recipe, tmp_path / "out2").code == 1
    run_id = json.loads(cli("runs", "--json").out)[0]["id"]
    steps = json.loads(cli("runs", "show", run_id, "--json").out)["steps"]
    statuses = {s["key"]: s["status"] for s in steps}
    assert statuses == {"each": "failed", "each[0]": "changed", "each[1]": "failed"}
    assert all(s["ended"] for s in steps)
    failed = next(s for s in steps if s["key"] == "each[1]")
    assert f"{tmp_path}/b.txt" in failed["error"]


def test_a_run_of_another_host_is_not_called_interrupted(tmp_path: Path) -> None:
    journal = Journal()
    journal.start_run("r-elsewhere", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    sql = journal.sql("UPDATE {runs} SET pid=?, host=? WHERE id=?")
    journal.tables.write([(sql, (2**22 + 1, "another-host", "r-elsewhere"))])
    record = journal.run("r-elsewhere")
    assert record is not None and record.host == "another-host"
    assert record.shown_status == "running"  # its process cannot be seen from here
    journal.tables.write([(sql, (2**22 + 1, record_host(), "r-elsewhere"))])
    assert journal.run("r-elsewhere").shown_status == "interrupted"  # type: ignore[union-attr]


def record_host() -> str:
    from wsrun.core.journal import HOST

    return HOST


def test_a_killed_run_is_interrupted_then_resumed(tmp_path: Path, wsrun_home: Path) -> None:
    marker = tmp_path / "marker"
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: waits
        steps:
          - {{id: first, uses: mkdir, with: {{path: "{tmp_path}/made"}}}}
          - {{id: wait, uses: wait-files, with: {{paths: ["{marker}"], timeout: 60}}}}
          - {{id: after, uses: mkdir, with: {{path: "{tmp_path}/after"}}}}
    """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe), "-q"],
        cwd=tmp_path,
        env={**os.environ, "WSRUN_HOME": str(wsrun_home)},
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "made").is_dir():  # then it waits for the marker
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [run] = json.loads(run_wsrun("runs", "--json", cwd=tmp_path).out)
    assert run["status"] == "interrupted"
    marker.touch()
    r = run_wsrun("resume", run["id"], cwd=tmp_path)
    assert r.code == 0, r.err
    assert (tmp_path / "after").is_dir()
    assert Journal().run(run["id"]).status == "changed"  # type: ignore[union-attr]
