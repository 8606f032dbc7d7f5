"""Docs and schemas are generated from the step modules; they must be current,
and every step type must document itself fully."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT
from wsrun.cli import docgen
from wsrun.core import stepdocs
from wsrun.core.step import load_step, params_schema, step_names
from wsrun.core.validate import schema_messages


def test_step_reference_in_docs_is_current() -> None:
    text = (ROOT / "docs" / "recipes.md").read_text()
    assert docgen.render(text) == text, "run `make docs` to regenerate docs/recipes.md"


def test_generated_schemas_are_current() -> None:
    for name in step_names():
        path = ROOT / "schemas" / "steps" / f"{name}.schema.json"
        assert path.exists(), f"run `make schemas` ({path} is missing)"
        assert json.loads(path.read_text()) == params_schema(load_step(name)), (
            f"run `make schemas` ({name})"
        )
    assert (
        json.loads((ROOT / "schemas" / "wsrun.schema.json").read_text()) == stepdocs.full_schema()
    )


@pytest.mark.parametrize("name", step_names())
def test_step_documents_itself(name: str) -> None:
    module = load_step(name)
    assert module.NAME == name
    assert module.DOC.strip() and module.EXAMPLES and isinstance(module.OUTPUTS, dict)
    for prop, spec in module.SCHEMA.get("properties", {}).items():
        assert spec.get("description"), f"{name}.{prop} has no description"
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(params_schema(module))
    validator = Draft202012Validator(params_schema(module))
    for example in module.EXAMPLES:
        steps = yaml.safe_load(example)
        for step in steps if isinstance(steps, list) else [steps]:
            if step.get("uses") == name:
                assert not schema_messages(validator, step.get("with") or {}), example


def test_full_schema_checks_step_parameters_in_editors() -> None:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(stepdocs.full_schema())
    good = {"recipe": "x", "steps": [{"uses": "mkdir", "with": {"path": "/tmp/x"}}]}
    bad = {"recipe": "x", "steps": [{"uses": "mkdir", "with": {"paht": "/tmp/x"}}]}
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors(bad))


def test_steps_command_prints_docs(cli) -> None:
    r = cli("steps")
    assert r.code == 0 and all(n in r.out for n in ("copy", "tar", "rsync", "checksum"))
    r = cli("steps", "copy")
    assert r.code == 0 and "parameters:" in r.out and "sources" in r.out and "example:" in r.out
    assert cli("steps", "nope").code == 2
    r = cli("schema")
    assert r.code == 0 and json.loads(r.out)["$defs"]["with_copy"]
