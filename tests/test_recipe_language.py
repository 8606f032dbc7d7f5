"""The recipe language through the CLI: inputs, expressions, conditions, loops,
outputs, nested recipes, on_failure/finally, retries and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write


def test_inputs_parse_like_argparse_and_keep_native_types(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: types
        inputs:
          src: {type: path, positional: true, help: Source}
          count: {type: int, default: 3, flags: [-c, --count]}
          ratio: {type: float, default: 0.5}
          tar: {type: bool, flags: [-t, --tar], help: Make a tar}
          mode: {type: choice, choices: [fast, safe], default: safe}
          names: {type: list, default: []}
        steps:
          - id: echo
            uses: noop
            with:
              src: "{{ inputs.src }}"
              count: "{{ inputs.count + 1 }}"
              ratio: "{{ inputs.ratio }}"
              tar: "{{ inputs.tar }}"
              mode: "{{ inputs.mode }}"
              names: "{{ inputs.names }}"
              text: "n={{ inputs.count }}"
        outputs:
          all: "{{ steps.echo.outputs }}"
    """,
    )
    r = cli(recipe, "data", "-t", "-c", "7", "--names", "a", "b", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)["outputs"]["all"]
    assert out == {
        "src": str(tmp_path / "data"),
        "count": 8,
        "ratio": 0.5,
        "tar": True,
        "mode": "safe",
        "names": ["a", "b"],
        "text": "n=7",
    }


def test_recipe_help_and_usage_errors(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: deliverish
        description: Copy products somewhere.
        inputs:
          source_directory: {type: path, positional: true, metavar: SOURCE_DIRECTORY, help: Where the products are}
          use: {type: bool, flags: [-p, --use-piperesults], exclusive: pipe, help: Use the manifest}
          ignore: {type: bool, flags: [-P, --ignore-piperesults], exclusive: pipe, help: Ignore it}
          local: {type: path, flags: [-l, --local-destination], group: Destination options, help: Deliver here}
        steps:
          - uses: noop
    """,
    )
    r = cli(recipe, "--help")
    assert r.code == 0
    assert "usage:" in r.out and "[-p | -P]" in r.out and "Destination options:" in r.out
    assert "Where the products are" in r.out
    r = cli(recipe, "src", "-p", "-P")
    assert r.code == 2 and "not allowed with argument" in r.err
    r = cli(recipe)
    assert r.code == 2 and "required" in r.err


def test_if_for_each_and_vars(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: loops
        inputs:
          flag: {type: bool}
        vars:
          base: "/data/{{ inputs.flag }}"
          files: "{{ ['a.fits', 'b.fits'] }}"
        steps:
          - id: skipped
            uses: noop
            if: inputs.flag
            with: {x: 1}
          - id: each
            uses: noop
            for_each: vars.files
            with: {path: "{{ vars.base }}/{{ item }}", n: "{{ index }}"}
        outputs:
          paths: "{{ steps.each.outputs.results | map(attribute='path') | list }}"
          skipped: "{{ steps.skipped.status }}"
    """,
    )
    r = cli(recipe, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["outputs"] == {
        "paths": ["/data/False/a.fits", "/data/False/b.fits"],
        "skipped": "skipped",
    }
    assert [s["status"] for s in data["steps"]] == ["skipped", "ok"]


def test_sandbox_refuses_unsafe_expressions(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: sandbox
        steps:
          - uses: noop
            with: {x: "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
    """,
    )
    # a constant expression is evaluated by validation: refused before any step runs
    r = cli(recipe)
    assert r.code == 2
    assert f"{recipe}:4:15: " in r.err and ("unsafe" in r.err or "SecurityError" in r.err)
    assert "Traceback" not in r.err


def test_unknown_name_at_run_time_names_step_and_line(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: strict
        inputs:
          data: {type: string, default: "{}"}
        steps:
          - id: first
            uses: noop
            with: {x: "{{ (inputs.data | from_json).missing }}"}
    """,
    )
    r = cli(recipe)
    assert r.code == 1
    line = r.err.strip().splitlines()[0]
    assert (
        "step 'first'" in line and "r.yaml:5:5" in line and "with.x" in line and "missing" in line
    )


def test_nested_recipe_with_inputs_and_outputs(cli, tmp_path: Path) -> None:
    write(
        tmp_path / "child.yaml",
        """
        recipe: child
        inputs:
          who: {type: string, required: true}
        steps:
          - id: greet
            uses: noop
            with: {text: "hello {{ inputs.who }}"}
        outputs:
          text: "{{ steps.greet.outputs.text }}"
    """,
    )
    parent = write(
        tmp_path / "parent.yaml",
        """
        recipe: parent
        steps:
          - id: call
            uses: ./child.yaml
            with: {who: world}
        outputs:
          text: "{{ steps.call.outputs.text }}"
    """,
    )
    r = cli(parent, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outputs"] == {"text": "hello world"}


def test_on_failure_and_finally_see_the_error(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: rescue
        steps:
          - id: boom
            uses: noop
            with: {x: "{{ 1 // 0 }}"}
          - id: never
            uses: noop
        on_failure:
          - id: cleanup
            uses: noop
            with: {why: "{{ error.message }}"}
        finally:
          - id: always
            uses: noop
    """,
    )
    r = cli(recipe, "--json")
    assert r.code == 1
    data = json.loads(r.out)
    keys = [s["id"] for s in data["steps"]]
    assert keys == ["boom", "cleanup", "always"]
    assert data["status"] == "failed"


def test_continue_on_error_keeps_going(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: tolerant
        steps:
          - id: flaky
            uses: noop
            continue_on_error: true
            with: {x: "{{ 1 // 0 }}"}
          - id: after
            uses: noop
            with: {seen: "{{ steps.flaky.status }}"}
        outputs:
          seen: "{{ steps.after.outputs.seen }}"
    """,
    )
    r = cli(recipe, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outputs"] == {"seen": "failed"}


def test_missing_recipe_and_exit_codes(cli, tmp_path: Path) -> None:
    r = cli(tmp_path / "nope.yaml")
    assert r.code == 2 and "no recipe" in r.err
    r = cli("--bogus")
    assert r.code == 2
    r = cli("--help")
    assert r.code == 0 and "usage: wsrun RECIPE" in r.out


def test_retry_with_backoff_until_the_step_succeeds(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: flaky
        steps:
          - id: third_time_lucky
            uses: shell
            retry: {attempts: 3, delay: 0.01, backoff: 2}
            with:
              argv: [sh, -c, 'n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ "$n" -ge 2 ]']
    """,
    )
    r = cli(recipe)
    assert r.code == 0, r.err
    assert (tmp_path / "count").read_text().strip() == "3"
    assert r.err.count("retrying in") == 2
    (tmp_path / "count").unlink()
    recipe.write_text(recipe.read_text().replace("attempts: 3", "attempts: 2"))
    r = cli(recipe)
    assert r.code == 1 and "(after 2 attempts)" in r.err


def test_step_timeout_stops_a_slow_step(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: slow
        steps:
          - id: nap
            uses: shell
            timeout: 300ms
            with: {argv: [sleep, "10"]}
    """,
    )
    r = cli(recipe)
    assert r.code == 1
    assert "step 'nap'" in r.err and "timed out" in r.err
