"""Third-party step types register through the `wsrun.steps` entry-point group."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import run_wsrun, write

PLUGIN = '''
"""A third party's step type."""
from wsrun.core.effects import create_file
from wsrun.core.fileio import write_bytes_atomic
from wsrun.core.step import Plan, Result

NAME = "greeting"
DOC = "Write a greeting file (a plugin example)."
SCHEMA = {"type": "object", "required": ["to", "name"], "properties": {
    "to": {"type": "string", "description": "file to write"},
    "name": {"type": "string", "description": "who to greet"}}}
EXAMPLES = ["- uses: greeting\\n  with: {to: hello.txt, name: world}\\n"]
OUTPUTS = {"file": "the file written"}


def plan(params, ctx):
    path = ctx.path(params["to"])
    text = f"hello {params['name']}\\n".encode()
    info = ctx.fs.lstat(path)
    effects = [] if info is not None and info.size == len(text) else [create_file(path, len(text), content=text)]
    return Plan(effects, {"file": path}, text)


def apply(plan, ctx):
    for e in plan.effects:
        write_bytes_atomic(e.path, plan.data)
    return Result(plan.effects, plan.outputs)
'''


def test_entry_point_step_is_listed_documented_and_runs(tmp_path: Path, wsrun_home: Path) -> None:
    site = tmp_path / "site"
    write(site / "acme_steps.py", PLUGIN)
    dist = site / "acme_steps-1.0.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: acme-steps\nVersion: 1.0\n")
    write(dist / "entry_points.txt", "[wsrun.steps]\ngreeting = acme_steps\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    r = run_wsrun("steps", cwd=tmp_path, env=env)
    assert r.code == 0 and "greeting" in r.out and "Write a greeting file" in r.out
    r = run_wsrun("steps", "greeting", cwd=tmp_path, env=env)
    assert "who to greet" in r.out
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: plugged
        steps:
          - id: hi
            uses: greeting
            with: {to: out.txt, name: plugin}
    """,
    )
    r = run_wsrun(recipe, "--json", cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    assert (tmp_path / "out.txt").read_text() == "hello plugin\n"
    assert json.loads(r.out)["steps"][0]["status"] == "changed"
    # Its schema may change without wsrun's version: every run checks the recipe again.
    assert not (wsrun_home / "validated").exists()
    bad = write(tmp_path / "bad.yaml", "recipe: b\nsteps:\n  - uses: greeting\n    with: {to: x}\n")
    r = run_wsrun("validate", bad, cwd=tmp_path, env=env)
    assert r.code == 2 and "'name' is a required property" in r.err
    # The plugin's step type joins the editors' schema: a known `uses`, its parameters checked.
    r = run_wsrun("schema", cwd=tmp_path, env=env)
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(r.out))
    good = {"recipe": "p", "steps": [{"uses": "greeting", "with": {"to": "x", "name": "y"}}]}
    assert not list(validator.iter_errors(good))
    misspelled = {"recipe": "p", "steps": [{"uses": "greeting", "with": {"to": "x", "nmae": "y"}}]}
    assert list(validator.iter_errors(misspelled))
    assert list(validator.iter_errors({"recipe": "p", "steps": [{"uses": "greetings"}]}))
