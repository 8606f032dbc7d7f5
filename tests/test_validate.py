"""`wsrun validate`: every problem in one pass, as file:line:col with the line."""

from __future__ import annotations

from pathlib import Path

from conftest import write

BAD = """
recipe: bad
inputs:
  src: {type: path, positional: true}
  mode: {type: choice}
steps:
  - id: a
    uses: nope
  - id: b
    uses: noop
    with: {v: "{{ inputs.srcc }}", w: "{{ steps.c.outputs.x }}", z: "{{ item }}", q: "{{ foo(" }
    colour: red
  - id: c
    uses: noop
    retry: {attempts: 0}
    if: "vars.missing"
"""


def test_all_problems_reported_with_positions(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", BAD)
    r = cli("validate", path)
    assert r.code == 2
    expected = [
        ("4:9", "input 'mode' is a choice but lists no 'choices'"),
        ("7:11", "unknown step type 'nope'"),
        ("10:15", "unknown input 'srcc'"),
        ("10:39", "step 'c' runs later"),
        ("10:69", "unknown name 'item'"),
        ("10:86", "expression syntax"),
        ("11:5", "unknown key 'colour'"),
        ("14:23", "less than the minimum of 1"),
        ("15:9", "unknown var 'missing'"),
    ]
    for pos, message in expected:
        assert any(
            line.startswith(f"{path}:{pos}: ") and message in line for line in r.err.splitlines()
        ), (pos, message, r.err)
    assert "    colour: red" in r.err  # the offending line is shown


def test_step_parameters_checked_against_schema(cli, tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.yaml",
        """
        recipe: params
        steps:
          - uses: copy
            with: {sources: a, too: b}
          - uses: copy
            with: {sources: "{{ run.workdir }}", to: 5}
    """,
    )
    r = cli("validate", path)
    assert r.code == 2
    assert f"{path}:4:24: copy: unknown key 'too'" in r.err
    assert "'to' is a required property" in r.err
    assert f"{path}:6:46: copy: " in r.err and "is not of type 'string'" in r.err


def test_yaml_errors_and_duplicate_keys(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "recipe: x\nsteps:\n  - uses: noop\n    with: {a: {{ b }}}\n")
    r = cli("validate", path)
    assert r.code == 2 and f"{path}:4:" in r.err and "must be quoted" in r.err
    path = write(tmp_path / "d.yaml", "recipe: x\nsteps: []\nsteps: []\n")
    r = cli("validate", path)
    assert r.code == 2 and f"{path}:3:1: duplicate key 'steps'" in r.err


def test_running_an_invalid_recipe_validates_first(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", BAD)
    r = cli(path, "x")
    assert r.code == 2 and "unknown step type 'nope'" in r.err


def test_valid_recipe_passes_and_nested_recipe_inputs_checked(cli, tmp_path: Path) -> None:
    write(
        tmp_path / "child.yaml",
        """
        recipe: child
        inputs:
          who: {type: string, required: true}
        steps: [{uses: noop}]
    """,
    )
    path = write(
        tmp_path / "parent.yaml",
        """
        recipe: parent
        steps:
          - uses: ./child.yaml
            with: {whom: x}
          - uses: ./missing.yaml
    """,
    )
    r = cli("validate", path)
    assert r.code == 2
    assert (
        "has no input 'whom'" in r.err
        and "needs input 'who'" in r.err
        and "no recipe './missing.yaml'" in r.err
    )
    r = cli("validate", tmp_path / "child.yaml")
    assert r.code == 0 and "ok" in r.out


def test_validation_result_is_reused_only_while_every_called_recipe_is_unchanged(
    cli, tmp_path: Path, wsrun_home: Path
) -> None:
    child = write(
        tmp_path / "child.yaml",
        """
        recipe: child
        steps: [{uses: noop}]
    """,
    )
    parent = write(
        tmp_path / "parent.yaml",
        """
        recipe: parent
        steps:
          - uses: ./child.yaml
    """,
    )
    assert cli(parent).code == 0
    markers = sorted((wsrun_home / "validated").iterdir())
    assert len(markers) == 2  # the parent (with its child) and the child on its own
    assert cli(parent).code == 0
    assert sorted((wsrun_home / "validated").iterdir()) == markers
    child.write_text("recipe: child\nsteps: [{uses: noop, bogus: 1}]\n")
    r = cli(parent)
    assert r.code == 1 and "unknown key 'bogus'" in r.err


def test_a_recipe_of_a_packs_step_types_is_checked_once(
    cli, tmp_path: Path, wsrun_home: Path
) -> None:
    """The packs' step types ship with wsrun, so a recipe using them is keyed like
    one of built-in steps: checked by its first run, not by every run (which would
    import jsonschema each time). Its parameters are still checked that first time."""
    wrong = write(
        tmp_path / "wrong.yaml",
        """
        recipe: wrong
        steps:
          - uses: image-derivative
            with: {source: scan.tif, derivatives: [{to: scan.jp2}], colour: red}
    """,
    )
    r = cli(wrong)
    assert r.code == 2 and "colour" in r.err
    assert not (wsrun_home / "validated").exists()
    good = write(
        tmp_path / "good.yaml",
        """
        recipe: good
        steps:
          - uses: image-derivative
            with: {source: scan.tif, derivatives: [{to: scan.jp2}]}
    """,
    )
    r = cli(good)
    assert r.code == 1 and "source image does not exist" in r.err  # valid, and run
    assert len(list((wsrun_home / "validated").iterdir())) == 1


def test_values_judged_obviously_valid_are_valid_for_jsonschema_too() -> None:
    """The runner checks the values expressions yield with obviously_valid first and
    imports jsonschema only when it says no: it must never pass a value jsonschema
    refuses, and it passes image-derivative's usual list of derivatives (an array
    of objects), so that a run of it does not import jsonschema."""
    from jsonschema import Draft202012Validator

    from wsrun.core.validate import obviously_valid
    from wsrun.packs.distillery.image_derivative import SCHEMA

    derivatives = SCHEMA["properties"]["derivatives"]
    closed = {
        "type": "object",
        "required": ["to"],
        "additionalProperties": False,
        "properties": {"to": {"type": "string", "minLength": 1}, "n": {"exclusiveMinimum": 1}},
    }
    open_ = {**closed, "additionalProperties": True}
    cases = [
        (derivatives, [{"to": "a.jp2", "lossless": True}, {"to": "b.jpg", "max_size": 200}], True),
        (derivatives, [{"to": "a.jp2", "ratio": 20.5, "format": "jp2"}], True),
        (derivatives, [{"to": "a.jp2", "ratio": 1}], False),  # exclusiveMinimum 1
        (derivatives, [{"to": "a.jp2", "lossless": "yes"}], False),
        (derivatives, [{"to": "a.jp2", "colour": "red"}], False),  # no additional keys
        (derivatives, [{"lossless": True}], False),  # `to` is required
        (derivatives, [{"to": ""}], False),
        (derivatives, [], False),  # minItems 1
        (derivatives, [{"to": "a.jp2", "quality": 96}], False),
        (closed, {"to": "x", "n": 2}, True),
        (closed, {"to": "x", "n": 1}, False),
        (closed, {"to": "x", "m": 1}, False),
        (open_, {"to": "x", "m": 1}, True),
        (open_, {"m": 1}, False),
        ({"required": ["to"]}, "not an object", True),  # object keywords apply to objects
        (closed, "not an object", False),
        ({"type": "object", "properties": {"a": {"type": "integer"}}}, {"a": True}, False),
        ({"additionalProperties": {"type": "string"}}, {"a": 1}, False),
        ({"exclusiveMaximum": 5}, 5, False),
        ({"exclusiveMaximum": 5}, 4.5, True),
    ]
    for schema, value, obvious in cases:
        valid = Draft202012Validator(schema).is_valid(value)
        assert obviously_valid(schema, value) is obvious, (schema, value)
        assert valid or not obvious, (schema, value)
