"""One command line: every command takes -q, -v and (where it prints results)
--json as a run does, usage errors read like a recipe's, and the shell
completion script completes commands, recipe names and a recipe's options."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_wsrun, write

GOOD = "recipe: good\nsteps:\n  - uses: noop\n"
BAD = "recipe: bad\nsteps:\n  - uses: cpy\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (("runs", "--bogus"), "wsrun runs: error: no such option: --bogus"),
        (("validate",), "wsrun validate: error: missing argument"),
        (("state", "ls", "--limit", "x"), "wsrun state ls: error: invalid value for '--limit'"),
        (("bus", "sendd"), "wsrun bus: error: no such command 'sendd'"),
        (("recipes", "--json", "extra"), "wsrun recipes: error: got unexpected extra argument"),
        (("runs", "foo"), "wsrun runs: error: unknown action 'foo'"),
        (("graph",), "wsrun graph: error: name a recipe or a lifecycle"),
        (("plan",), "wsrun plan: error: name a recipe"),
        (("completion",), "wsrun completion: error: name a shell"),
    ],
)
def test_usage_errors_read_like_a_recipes(cli, args: tuple[str, ...], message: str) -> None:
    r = cli(*args)
    assert r.code == 2
    lines = r.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"usage: wsrun {args[0]}"), r.err
    assert lines[1].startswith(message), r.err
    assert "╭" not in r.err and "Traceback" not in r.err


def test_recipe_usage_errors_have_the_same_shape(cli, tmp_path: Path) -> None:
    r = cli(ROOT / "examples" / "quickstart", "--bogus")
    assert r.code == 2 and r.err.splitlines()[0].startswith("usage: wsrun ")
    assert "error: " in r.err.splitlines()[-1]


def test_quiet_prints_only_errors(cli, tmp_path: Path) -> None:
    good, bad = write(tmp_path / "good.yaml", GOOD), write(tmp_path / "bad.yaml", BAD)
    r = cli("validate", good)
    assert r.code == 0 and f"{good}: ok" in r.out
    r = cli("validate", "-q", good)
    assert r.code == 0 and r.out == "" and r.err == ""
    r = cli("validate", bad, "--quiet")
    assert r.code == 2 and r.out == "" and "unknown step type 'cpy'" in r.err
    assert cli("recipes", "-q").out == ""
    assert cli("steps", "-q").out == ""


@pytest.fixture
def capo_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPO_PATH", str(tmp_path / "capo"))
    return tmp_path / "capo"


def test_json_where_a_command_prints_results(cli, tmp_path: Path, capo_path: Path) -> None:
    good, bad = write(tmp_path / "good.yaml", GOOD), write(tmp_path / "bad.yaml", BAD)
    r = cli("validate", "--json", good, bad, tmp_path / "missing.yaml")
    assert r.code == 2
    results = json.loads(r.out)
    assert [x["ok"] for x in results] == [True, False, False]
    (problem,) = results[1]["problems"]
    assert problem["file"] == str(bad) and (problem["line"], problem["col"]) == (3, 11)
    assert "cpy" in problem["message"]
    assert results[2]["problems"] == [{"message": "no such recipe"}]
    names = [r["name"] for r in json.loads(cli("recipes", "--json").out)]
    assert "nrao/deliver" in names and "alma/ous-lifecycle" not in names
    steps = json.loads(cli("steps", "--json").out)
    assert any(s["name"] == "copy" and s["summary"] for s in steps)
    capo = write(
        capo_path / "p.properties",
        "edu.x.downloadDirectory: /data\nedu.x.dbPassword = hunter2\n",
    )
    r = cli("settings", "--json", "--profile", "p", "edu.x.downloadDirectory", "edu.x.dbPassword")
    assert r.code == 0, r.err
    shown = json.loads(r.out)
    assert shown["profile"] == "p" and shown["missing"] == []
    assert shown["settings"] == [
        {"name": "edu.x.downloadDirectory", "value": "/data", "source": f"{capo}:1"},
        {"name": "edu.x.dbPassword", "value": "********", "source": f"{capo}:2"},
    ]
    assert "hunter2" not in r.out


def test_settings_json_reads_the_capo_path(cli, capo_path: Path) -> None:
    write(capo_path / "q.properties", "a.b = 1\n")
    r = cli("settings", "--json", "--profile", "q", "a.b", "c.d")
    assert r.code == 1
    assert json.loads(r.out)["missing"] == ["c.d"]


def test_an_unreadable_journal_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "not-a-dir"
    home.write_text("a file where WSRUN_HOME should be a directory")
    r = run_wsrun("runs", cwd=tmp_path, env={"WSRUN_HOME": str(home)})
    assert r.code == 2 and "Traceback" not in r.err and str(home) in r.err
    assert len(r.err.splitlines()) == 1


def test_verbose_shows_the_traceback_of_an_unexpected_error(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsrun.cli.commands

    def broken() -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(wsrun.cli.commands, "_open_journal", broken)
    r = cli("runs")
    assert r.code == 1 and "Traceback" not in r.err
    assert r.err.startswith("wsrun runs: error: RuntimeError: a defect")
    assert "(-v shows the traceback)" in r.err and len(r.err.splitlines()) == 1
    r = cli("runs", "-v")
    assert r.code == 1 and "Traceback (most recent call last)" in r.err


def test_resume_takes_quiet(cli, tmp_path: Path) -> None:
    missing = tmp_path / "later"
    recipe = write(
        tmp_path / "r.yaml",
        f"recipe: two\nsteps:\n  - uses: copy\n    with: {{sources: {missing}, to: {tmp_path}/out}}\n",
    )
    r = cli(recipe, "--json")
    assert r.code == 1
    run_id = json.loads(r.out)["run_id"]
    missing.write_text("here now")
    r = cli("resume", run_id, "-q")
    assert r.code == 0 and r.out == "" and r.err == ""
    assert (tmp_path / "out" / "later").read_text() == "here now"


def _bash_complete(words: list[str], tmp_path: Path) -> list[str]:
    script = run_wsrun("completion", "bash", cwd=tmp_path).out
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        '_wsrun_complete; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    # The script calls `wsrun`: the one of this Python first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.run(
        ["bash", "--norc", "-c", program],
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_recipes_and_options(tmp_path: Path) -> None:
    write(
        tmp_path / "stage.yaml",
        "recipe: s\ninputs:\n  fast: {type: bool, flags: [--fast]}\nsteps:\n  - uses: noop\n",
    )
    (tmp_path / "sub").mkdir()
    assert _bash_complete(["wsrun", "va"], tmp_path) == ["validate"]
    assert _bash_complete(["wsrun", "nrao/de"], tmp_path) == ["nrao/deliver"]
    assert _bash_complete(["wsrun", "st"], tmp_path) == ["steps", "state", "stage.yaml"]
    assert _bash_complete(["wsrun", "s"], tmp_path)[-1] == "sub/"
    assert _bash_complete(["wsrun", "bus", "re"], tmp_path) == ["resend"]
    assert "--json" in _bash_complete(["wsrun", "runs", "--"], tmp_path)
    deliver = _bash_complete(["wsrun", "nrao/deliver", "--"], tmp_path)
    assert "--use-piperesults" in deliver and "--dry-run" in deliver
    assert _bash_complete(["wsrun", "stage.yaml", "--f"], tmp_path) == ["--fast"]
    assert _bash_complete(["wsrun", "completion", ""], tmp_path) == ["bash", "zsh"]


def test_zsh_completion_completes_recipe_options(cli, tmp_path: Path) -> None:
    r = cli("completion", "zsh")
    assert r.code == 0 and "compdef _wsrun wsrun" in r.out
    assert cli("completion", "fish").code == 2
    if shutil.which("zsh") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("zsh is not installed (make tools installs it)")
        pytest.skip("zsh is not installed (make tools installs it)")
    # Outside a completion widget: compadd and _files print what they are given.
    program = (
        "compdef() { : }\n"
        "compadd() { while [[ $1 == -* && $1 != -- ]]; do [[ $1 == -S ]] && shift; shift; done;"
        ' shift; print -l -- "$@" }\n'
        '_files() { print "(files)" }\n'
        f"{r.out}\n"
        "words=(wsrun nrao/deliver --use); CURRENT=3; _wsrun\n"
        "words=(wsrun va); CURRENT=2; _wsrun\n"
        "words=(wsrun nrao/deliver x); CURRENT=3; _wsrun\n"
    )
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.run(
        ["zsh", "-f", "-c", program],
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.splitlines() == ["--use-piperesults", "validate", "(files)"], proc.stderr


def test_the_command_leaves_no_object_for_the_shutdown_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wsrun`` as a command ends its run with every object frozen out of the
    garbage collector, which the interpreter's shutdown would otherwise walk
    again; the exit status is main's."""
    import gc

    from wsrun.cli.main import script

    good, bad = write(tmp_path / "good.yaml", GOOD), write(tmp_path / "bad.yaml", BAD)
    monkeypatch.chdir(tmp_path)
    try:
        for recipe, status in ((good, 0), (bad, 2)):
            monkeypatch.setattr(sys, "argv", ["wsrun", str(recipe), "-q"])
            assert script() == status
            assert len(gc.get_objects()) < 100 < gc.get_freeze_count()
    finally:
        gc.unfreeze()
