"""Tests of the ``shell`` step: argv only, declared effects, clean failures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wsrun.core.effects import create_dir, create_file, remove
from wsrun.core.fs import WorldView
from wsrun.core.step import Plan, Result, StepContext, StepError, load_step, params_schema
from wsrun.testing import effect_dicts, plan_step, run_step

shell = load_step("shell")


def context(tmp_path: Path, **kwargs: Any) -> StepContext:
    return StepContext(fs=WorldView(), workdir=str(tmp_path), step_id="shell", **kwargs)


def run(params: dict[str, Any], ctx: StepContext) -> tuple[Plan, Result]:
    plan = shell.plan(params, ctx)
    return plan, shell.apply(plan, ctx)


def snapshot(root: Path) -> dict[str, tuple[str, int, int, bytes | str]]:
    """Every entry below ``root``: kind, size, mtime and content (or link target)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            tree[str(path)] = ("link", 0, 0, os.readlink(path))
        elif path.is_dir():
            tree[str(path)] = ("dir", 0, 0, b"")
        else:
            tree[str(path)] = ("file", st.st_size, st.st_mtime_ns, path.read_bytes())
    return tree


def validation_errors(params: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(params_schema(shell))
    return [e.message for e in validator.iter_errors(params)]


# ---- schema --------------------------------------------------------------------


def test_schema_accepts_an_argv_list() -> None:
    assert validation_errors({"argv": ["tar", "-xf", "in.tar"], "creates": "out/"}) == []


def test_schema_rejects_a_shell_string_pointing_to_argv_lists() -> None:
    errors = validation_errors({"argv": "tar -xf in.tar"})
    assert len(errors) == 1
    assert errors[0].startswith("""'a list such as ["tar", "-xf", "in.tar"]""")
    assert "shell command string is not accepted" in errors[0]


def test_schema_rejects_an_empty_argv_and_unknown_params() -> None:
    assert validation_errors({"argv": []})
    assert validation_errors({"argv": ["true"], "shell": True})
    assert validation_errors({"argv": ["true"], "env": {"N": 1}})


# ---- running ---------------------------------------------------------------------


def test_runs_argv_and_captures_output(tmp_path: Path) -> None:
    params = {"argv": ["sh", "-c", "echo out; echo err >&2"]}
    plan, result = run_step("shell", params, str(tmp_path))
    assert result.outputs == {"returncode": 0, "stdout": "out\n", "stderr": "err\n"}
    assert effect_dicts(result.effects) == [
        {"op": "run", "path": "sh", "argv": ["sh", "-c", "echo out; echo err >&2"]}
    ]
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert result.status == "changed"


def test_arguments_reach_the_program_unsplit_and_unexpanded(tmp_path: Path) -> None:
    params = {"argv": ["printf", "%s|", "a b", "$HOME", "*", "; rm -rf x"]}
    _, result = run_step("shell", params, str(tmp_path))
    assert result.outputs["stdout"] == "a b|$HOME|*|; rm -rf x|"


def test_stdin_is_given_or_empty(tmp_path: Path) -> None:
    _, result = run_step("shell", {"argv": ["cat"], "stdin": "hello\n"}, str(tmp_path))
    assert result.outputs["stdout"] == "hello\n"
    # Without stdin the program reads end-of-file instead of waiting for a terminal.
    _, result = run_step("shell", {"argv": ["cat"]}, str(tmp_path))
    assert result.outputs["stdout"] == ""


def test_cwd_defaults_to_the_workdir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _, result = run_step("shell", {"argv": ["pwd"]}, str(tmp_path))
    assert result.outputs["stdout"].strip() == str(tmp_path)
    _, result = run_step("shell", {"argv": ["pwd"], "cwd": "sub"}, str(tmp_path))
    assert result.outputs["stdout"].strip() == str(tmp_path / "sub")


def test_missing_cwd_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="working directory does not exist") as e:
        run_step("shell", {"argv": ["pwd"], "cwd": "nowhere"}, str(tmp_path))
    assert e.value.path == str(tmp_path / "nowhere")


def test_a_relative_program_path_is_taken_from_cwd(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    script = tmp_path / "tools" / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $0\n")
    script.chmod(0o755)
    _, result = run_step("shell", {"argv": ["./hello.sh"], "cwd": "tools"}, str(tmp_path))
    assert result.outputs["stdout"] == "hello from ./hello.sh\n"


def test_env_is_passed_but_its_values_are_never_shown(tmp_path: Path) -> None:
    secret = "s3cret-token-value"
    params = {
        "argv": ["sh", "-c", 'test "$TOKEN" = "$EXPECTED" && echo "got $TOKEN"'],
        "env": {"TOKEN": secret, "EXPECTED": secret},
    }
    plan, result = run_step("shell", params, str(tmp_path))
    assert result.outputs["stdout"] == "got ***\n"
    shown = repr(plan) + repr(result) + repr(effect_dicts(result.effects))
    assert secret not in shown


def test_env_values_are_masked_in_error_messages(tmp_path: Path) -> None:
    params = {
        "argv": ["sh", "-c", 'echo "bad token $TOKEN" >&2; exit 2'],
        "env": {"TOKEN": "s3cret-token-value"},
    }
    with pytest.raises(StepError) as e:
        run_step("shell", params, str(tmp_path))
    assert "s3cret" not in str(e.value)
    assert "bad token ***" in str(e.value)


def test_env_inherits_the_run_environment_unless_told_not_to(tmp_path: Path) -> None:
    ctx = context(tmp_path, env={"PATH": os.environ["PATH"], "FROM_RUN": "run"})
    _, result = run({"argv": ["env"], "env": {"EXTRA": "x"}}, ctx)
    assert sorted(result.outputs["stdout"].splitlines()) == [
        "EXTRA=x",
        "FROM_RUN=run",
        f"PATH={os.environ['PATH']}",
    ]
    _, result = run({"argv": ["env"], "env": {"EXTRA": "x"}, "inherit_env": False}, ctx)
    assert result.outputs["stdout"] == "EXTRA=x\n"


def test_output_is_truncated_with_a_note(tmp_path: Path) -> None:
    params = {"argv": [sys.executable, "-c", "print('x' * 200_000 + 'END')"]}
    _, result = run_step("shell", params, str(tmp_path))
    stdout = result.outputs["stdout"]
    assert stdout.startswith("[wsrun: first ")
    assert stdout.endswith("xEND\n")
    assert len(stdout) < shell.CAPTURE_LIMIT + 100


def test_capture_false_passes_output_through(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _, result = run_step("shell", {"argv": ["echo", "live"], "capture": False}, str(tmp_path))
    assert result.outputs == {"returncode": 0, "stdout": None, "stderr": None}
    assert "live" in capfd.readouterr().out


# ---- failures ----------------------------------------------------------------------


def test_nonzero_exit_names_program_code_and_last_stderr_lines(tmp_path: Path) -> None:
    params = {"argv": ["sh", "-c", "echo starting >&2; echo 'disk full' >&2; exit 3"]}
    with pytest.raises(StepError) as e:
        run_step("shell", params, str(tmp_path))
    assert str(e.value) == "sh: sh exited with code 3: starting | disk full"
    assert "\n" not in str(e.value)


def test_ok_codes_count_as_success(tmp_path: Path) -> None:
    params = {"argv": ["sh", "-c", "exit 3"], "ok_codes": [0, 3]}
    _, result = run_step("shell", params, str(tmp_path))
    assert result.outputs["returncode"] == 3
    with pytest.raises(StepError, match="exited with code 0"):
        run_step("shell", {"argv": ["true"], "ok_codes": [1]}, str(tmp_path))


def test_killed_by_a_signal(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="sh was killed by SIGTERM"):
        run_step("shell", {"argv": ["sh", "-c", "kill -TERM $$"]}, str(tmp_path))


def test_missing_program_fails_at_plan_time(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="command not found") as e:
        plan_step("shell", {"argv": ["no-such-program-wsrun"]}, str(tmp_path), view=WorldView())
    assert e.value.path == "no-such-program-wsrun"
    with pytest.raises(StepError, match="command not found"):
        run_step("shell", {"argv": ["./missing.sh"]}, str(tmp_path))


def test_program_vanishing_before_apply_is_command_not_found(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    ctx = context(tmp_path)
    plan = shell.plan({"argv": [str(script)]}, ctx)
    script.unlink()
    with pytest.raises(StepError, match="command not found") as e:
        shell.apply(plan, ctx)
    assert e.value.path == str(script)


def test_timeout_stops_the_program_and_what_it_started(tmp_path: Path) -> None:
    params = {"argv": ["sh", "-c", "sleep 5 & echo $! > child.pid; wait"]}
    ctx = context(tmp_path, deadline=time.monotonic() + 0.5)
    plan = shell.plan(params, ctx)
    started = time.monotonic()
    with pytest.raises(StepError, match=r"^timed out after [0-9.]+ s$"):
        shell.apply(plan, ctx)
    assert time.monotonic() - started < 4.5  # not the 5 s of the command
    child = int((tmp_path / "child.pid").read_text())
    assert _gone(child)


def test_timeout_of_a_plain_sleep(tmp_path: Path) -> None:
    ctx = context(tmp_path, deadline=time.monotonic() + 0.5)
    started = time.monotonic()
    with pytest.raises(StepError, match="timed out after"):
        run({"argv": ["sleep", "5"]}, ctx)
    assert time.monotonic() - started < 4.5  # not the 5 s of the command


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper counts)."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# ---- declared effects ----------------------------------------------------------------


def test_creates_is_reported_checked_and_makes_a_rerun_ok(tmp_path: Path) -> None:
    params = {
        "argv": ["sh", "-c", "echo data > out.txt; mkdir -p plots"],
        "creates": ["out.txt", "plots/"],
    }
    plan, result = run_step("shell", params, str(tmp_path))
    assert effect_dicts(result.effects) == [
        {"op": "run", "path": "sh", "argv": params["argv"]},
        {"op": "create_file", "path": str(tmp_path / "out.txt")},
        {"op": "create_dir", "path": str(tmp_path / "plots")},
    ]
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert (tmp_path / "out.txt").read_text() == "data\n"

    plan, result = run_step("shell", params, str(tmp_path))
    assert plan.effects == [] and plan.status == "ok"
    assert result.effects == [] and result.status == "ok"
    assert result.outputs == {"returncode": None, "stdout": None, "stderr": None}


def test_existing_creates_skip_the_program(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("old")
    params = {"argv": ["touch", "marker"], "creates": "out.txt"}
    plan, result = run_step("shell", params, str(tmp_path))
    assert plan.status == "ok" and result.status == "ok"
    assert not (tmp_path / "marker").exists()
    # One missing path is enough to run.
    params["creates"] = ["out.txt", "marker"]
    plan, result = run_step("shell", params, str(tmp_path))
    assert result.status == "changed"
    assert (tmp_path / "marker").exists()


def test_declared_output_not_created_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="declared to create .*out.txt but it does not exist"):
        run_step("shell", {"argv": ["true"], "creates": "out.txt"}, str(tmp_path))


def test_failed_run_removes_the_new_declared_outputs_only(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("before")
    params = {
        "argv": [
            "sh",
            "-c",
            "echo half > out.txt; mkdir -p outdir/x; echo more >> kept.txt; exit 1",
        ],
        "creates": ["out.txt", "outdir/", "kept.txt"],
    }
    with pytest.raises(StepError, match="exited with code 1"):
        run_step("shell", params, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["kept.txt"]


def test_removes_is_reported_and_checked(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    params = {"argv": ["rm", "old.txt"], "removes": "old.txt"}
    plan, result = run_step("shell", params, str(tmp_path))
    assert result.effects[1:] == [remove(str(tmp_path / "old.txt"))]
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert not (tmp_path / "old.txt").exists()

    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(StepError, match="declared to remove .*old.txt but it still exists"):
        run_step("shell", {"argv": ["true"], "removes": ["old.txt"]}, str(tmp_path))


# ---- dry run ---------------------------------------------------------------------------


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "existing.txt").write_text("x")
    before = snapshot(tmp_path)
    argv = ["sh", "-c", f"touch {marker}; rm existing.txt"]
    params = {"argv": argv, "creates": str(marker), "removes": "existing.txt"}
    plan = plan_step("shell", params, str(tmp_path), view=WorldView())
    assert effect_dicts(plan.effects) == [
        {"op": "run", "path": "sh", "argv": argv},
        {"op": "create_file", "path": str(marker)},
        {"op": "remove", "path": str(tmp_path / "existing.txt")},
    ]
    assert not marker.exists()
    assert snapshot(tmp_path) == before
    # A real run reports exactly what the dry run printed.
    _, result = run_step("shell", params, str(tmp_path))
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert marker.exists()


def test_dry_run_chain_sees_declared_outputs(tmp_path: Path) -> None:
    view = WorldView()
    view.record(create_dir(str(tmp_path / "tools")))
    # The working directory and the program may come from earlier planned steps.
    view.record(create_file(str(tmp_path / "tools" / "make-data"), bytes=10, mode=0o755))
    params = {"argv": ["./make-data"], "cwd": "tools", "creates": "out/data.bin"}
    plan = plan_step("shell", params, str(tmp_path), view=view)
    for effect in plan.effects:
        view.record(effect)
    assert view.is_file(str(tmp_path / "out" / "data.bin"))
    # The next step sees the output and, declaring the same, is skipped.
    again = plan_step(
        "shell", {"argv": ["true"], "creates": "out/data.bin"}, str(tmp_path), view=view
    )
    assert again.status == "ok"
    assert not (tmp_path / "out").exists()


def test_examples_are_valid() -> None:
    validator = jsonschema.Draft202012Validator(params_schema(shell))
    for example in shell.EXAMPLES:
        for step in yaml.safe_load(example):
            assert list(validator.iter_errors(step["with"])) == []
