"""Issue 16: authors arrive from Ansible and GitHub Actions; each habit gets one
line with the fix at the right file:line:col, and a misspelt name gets the
closest known one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write

HABITS = """
recipe: habits
name: my recipe
inputs:
  source: {type: path, default: "$HOME/data"}
steps:
  - name: make
    uses: mkdir
    when: "inputs.source"
    args: {path: x}
  - uses: mkdir
    vars: {path: y}
    env: {A: b}
    with: {path: "${OUT}/sub"}
  - uses: noop
    with: {v: "{{ steps.make.outputs.paths }}", w: "{{ inputs.sorce }}", z: "{{ input.source }}"}
  - uses: mkdirr
  - uses: copy
    with: {sources: a, to: "${{ inputs.source }}", chekcsum: sha256}
  - uses: noop
    with: {v: "{{ inputs.source | lenght }}"}
    loop: [1, 2]
    register: out
"""

EXPECTED = [
    ("2:1", "unknown key 'name': a recipe is named by `recipe:`"),
    (
        "4:33",
        "'$HOME' is not expanded in a path (it would be a directory named '$HOME'): use {{ env.HOME }}",
    ),
    ("8:5", "unknown key 'when': use `if:` for a condition"),
    ("9:5", "unknown key 'args': a step's parameters go in `with:`"),
    ("11:5", "unknown key 'vars': a step's parameters go in `with:`"),
    (
        "12:5",
        "unknown key 'env': a step has no `env:`; a shell step takes `with: {env: {NAME: value}}`",
    ),
    (
        "13:18",
        "'${OUT}' is not expanded in a path (it would be a directory named '${OUT}'): use {{ env.OUT }}",
    ),
    (
        "15:15",
        "step 'make' does not exist: 'make' is a step's `name:`, a label; steps.X refers to `id:`, so give that step `id: make`",
    ),
    ("15:52", "unknown input 'sorce' (did you mean 'source'?)"),
    ("15:77", "unknown name 'input' (did you mean 'inputs'?)"),
    ("16:11", "unknown step type 'mkdirr' (did you mean 'mkdir'?)"),
    ("18:28", "`${{ ... }}` is GitHub Actions syntax: wsrun expressions are `{{ ... }}`"),
    ("18:52", "copy: unknown key 'chekcsum' (did you mean 'checksum'?)"),
    ("20:15", "unknown filter 'lenght' (did you mean 'length'?)"),
    ("21:5", "unknown key 'loop': use `for_each:`"),
    ("22:5", "unknown key 'register': give the step an `id:`"),
]


def test_each_habit_gets_its_fix_at_its_position(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "habits.yaml", HABITS)
    r = cli("validate", path)
    assert r.code == 2 and "Traceback" not in r.err
    lines = [line for line in r.err.splitlines() if line.startswith(str(path))]
    for pos, message in EXPECTED:
        assert any(line.startswith(f"{path}:{pos}: {message}") for line in lines), (
            pos,
            message,
            lines,
        )
    # a habit is answered by its one line, not also by a list of every known key
    assert not any("unknown key" in line and "(known:" in line for line in lines), lines


def test_running_it_refuses_before_any_directory_named_dollar_exists(cli, tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.yaml",
        """
        recipe: home
        steps:
          - uses: mkdir
            with: {path: "$HOME/out"}
        """,
    )
    r = cli(path)
    assert r.code == 2 and "use {{ env.HOME }}" in r.err
    assert not (tmp_path / "$HOME").exists()


def test_the_environment_is_read_as_env(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    path = write(
        tmp_path / "r.yaml",
        """
        recipe: home
        steps:
          - id: made
            uses: mkdir
            with: {path: "{{ env.HOME }}/out"}
        outputs:
          made: "{{ steps.made.outputs.paths }}"
        """,
    )
    r = cli(path, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outputs"]["made"] == [str(home / "out")]
    assert (home / "out").is_dir() and not (tmp_path / "$HOME").exists()


def test_a_dollar_in_a_command_is_left_to_the_shell(cli, tmp_path: Path) -> None:
    """Only paths are checked: a shell step's argv may use $VAR for its shell."""
    path = write(
        tmp_path / "r.yaml",
        """
        recipe: sh
        steps:
          - uses: shell
            with: {argv: [sh, -c, 'echo "$HOME" > seen.txt']}
        """,
    )
    r = cli(path)
    assert r.code == 0, r.err
    assert (tmp_path / "seen.txt").read_text().strip() != "$HOME"


def test_unknown_key_without_a_close_name_lists_the_known_ones(cli, tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.yaml",
        """
        recipe: x
        steps:
          - uses: noop
            zzz: 1
        """,
    )
    r = cli("validate", path)
    assert r.code == 2
    assert (
        f"{path}:4:5: unknown key 'zzz' (known: continue_on_error, for_each, group, id, if,"
        in r.err
    )


def test_a_misspelt_option_gets_the_closest_one(cli, tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.yaml",
        """
        recipe: opts
        inputs:
          source: {type: path}
          dry: {type: bool}
        steps: [{uses: noop}]
        """,
    )
    r = cli(path, "--sorce", "a")
    assert r.code == 2
    assert "unrecognized arguments: --sorce a (did you mean '--source'?)" in r.err
    r = cli(path, "--zzzz")
    assert r.code == 2 and "did you mean" not in r.err
