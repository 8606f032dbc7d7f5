"""``wsrun resume ID`` takes a run's options (-q, --json, -v, --dry-run, --set)
with the same behaviour as a run (issue 15), heartbeats included."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_wsrun, write
from fixtures.progress_step import progress_plugin_env


def _failed_run(cli, tmp_path: Path) -> tuple[str, Path]:
    """A run whose first step copied a file and whose second failed: the
    second's source is missing until the test writes it."""
    write(tmp_path / "src" / "a", "first")
    missing = tmp_path / "later"
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: two
        steps:
          - id: first
            uses: copy
            with: {{sources: "{tmp_path}/src/a", to: "{tmp_path}/out"}}
          - id: second
            uses: copy
            with: {{sources: "{missing}", to: "{tmp_path}/out"}}
        """,
    )
    r = cli(recipe, "--json")
    assert r.code == 1
    return json.loads(r.out)["run_id"], missing


def test_resume_json_prints_only_the_json_result(cli, tmp_path: Path) -> None:
    run_id, missing = _failed_run(cli, tmp_path)
    missing.write_text("here now")
    r = cli("resume", run_id, "--json")
    assert r.code == 0 and r.err == ""
    doc = json.loads(r.out)  # stdout is the JSON alone, as for a run
    assert doc["run_id"] == run_id and doc["status"] == "changed"
    first, second = doc["steps"]
    assert first["resumed"] is True and "resumed" not in second
    assert [e["path"] for e in second["effects"]] == [str(tmp_path / "out" / "later")]
    # resuming a finished run: still JSON, and still nothing but JSON
    r = cli("resume", run_id, "--json")
    assert r.code == 0 and r.err == ""
    again = json.loads(r.out)
    assert (again["run_id"], again["status"], again["resumed"]) == (run_id, "changed", False)


def test_resume_quiet_prints_nothing_even_when_there_is_nothing_to_resume(
    cli, tmp_path: Path
) -> None:
    run_id, missing = _failed_run(cli, tmp_path)
    r = cli("resume", "-q", run_id)  # still failing: only the error
    assert r.code == 1 and r.out == ""
    assert r.err.startswith("error: step 'second'") and "Traceback" not in r.err
    missing.write_text("here now")
    r = cli("resume", run_id, "--quiet")
    assert (r.code, r.out, r.err) == (0, "", "")
    r = cli("resume", run_id, "-q")
    assert (r.code, r.out, r.err) == (0, "", "")
    r = cli("resume", run_id)
    assert r.code == 0 and "already finished" in r.out


def test_resume_verbose_adds_the_traceback_as_a_run_does(cli, tmp_path: Path) -> None:
    run_id, _ = _failed_run(cli, tmp_path)
    plain = cli("resume", run_id)
    assert plain.code == 1 and "Traceback" not in plain.err
    assert f"(resume with: wsrun resume {run_id})" in plain.err
    verbose = cli("resume", run_id, "-v")
    assert verbose.code == 1 and "Traceback (most recent call last)" in verbose.err
    assert verbose.err.splitlines()[-2].startswith("error: step 'second'")


def test_resume_dry_run_shows_what_is_left_and_keeps_the_run_resumable(cli, tmp_path: Path) -> None:
    run_id, missing = _failed_run(cli, tmp_path)
    missing.write_text("here now")
    r = cli("resume", run_id, "--dry-run")
    assert r.code == 0, r.err
    assert "first                copy             changed (done before resume)" in r.out
    assert f"+ file {tmp_path}/out/later" in r.out
    assert f"{tmp_path}/out/a" not in r.out  # done before: not planned again
    assert "Would create: 1 file (8 B), 0 directories" in r.out
    assert not (tmp_path / "out" / "later").exists()
    dry = cli("resume", run_id, "-n", "--json")
    doc = json.loads(dry.out)
    assert doc["dry_run"] is True and doc["run_id"] != run_id  # a run of its own
    shown = json.loads(cli("runs", "show", run_id, "--json").out)
    assert shown["status"] == "failed"  # the real run is untouched, still resumable
    r = cli("resume", run_id, "-q")
    assert r.code == 0 and (tmp_path / "out" / "later").read_text() == "here now"


def test_resume_takes_set_and_heartbeats_like_a_run(tmp_path: Path) -> None:
    """A resumed run into a pipe beats as a run does; --set reaches its settings
    (here: heartbeats off) and -q silences them."""
    env = {**progress_plugin_env(tmp_path), "WSRUN_HEARTBEAT": "1e-12"}
    gate = tmp_path / "never"
    recipe = write(
        tmp_path / "p.yaml",
        f"""
        recipe: p
        steps:
          - id: work
            uses: test-progress
            with: {{files: 3}}
          - id: then
            uses: copy
            with: {{sources: "{tmp_path}/later", to: "{tmp_path}/out"}}
          - id: more
            uses: test-progress
            with: {{files: 4, gate: "{gate}", hold_after: 99}}
        """,
    )
    first = run_wsrun(recipe, "--json", cwd=tmp_path, env=env)
    assert first.code == 1
    run_id = json.loads(first.out)["run_id"]
    write(tmp_path / "later", "x")
    off = run_wsrun(
        "resume", run_id, "-n", "--set", "wsrun.progress.heartbeat=off", cwd=tmp_path, env=env
    )
    assert off.code == 0 and "files/s" not in off.err
    quiet = run_wsrun("resume", run_id, "-n", "-q", cwd=tmp_path, env=env)
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
    r = run_wsrun("resume", run_id, cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    beats = [line for line in r.err.splitlines() if line.startswith("more (test-progress): ")]
    assert beats and beats[-1].startswith("more (test-progress): 4/4 files")
    assert not [line for line in r.err.splitlines() if line.startswith("work (")]  # done before
