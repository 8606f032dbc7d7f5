"""schemas/wsrun.schema.json as the clients recipe authors use see it.

Every packaged recipe, example, documentation snippet and step example must be
accepted, and each recipe in BAD (which ``wsrun validate`` rejects) must be
flagged, by the Python jsonschema library, check-jsonschema, ajv in strict mode
and yaml-language-server. The node clients come from ``make tools`` (into
``.tools/``); without them their tests skip, except under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write
from wsrun.core import loader
from wsrun.core.editor_schema import full_schema
from wsrun.core.step import load_step, step_names

SCHEMA = ROOT / "schemas" / "wsrun.schema.json"
TOOLS = ROOT / ".tools" / "node_modules"
AJV = TOOLS / ".bin" / "ajv"
YAMLLS = TOOLS / "yaml-language-server" / "bin" / "yaml-language-server"

#: Recipes ``wsrun validate`` rejects, each with the line of its mistake.
BAD: dict[str, tuple[str, int]] = {
    "unknown-step-type": ("recipe: x\nsteps:\n  - uses: cpy\n    with: {sources: a, to: b}\n", 3),
    "misspelled-parameter": (
        "recipe: x\nsteps:\n  - uses: copy\n    with:\n      sources: a\n      to: b\n      chekcsum: sha256\n",
        7,
    ),
    "bad-enum": (
        "recipe: x\nsteps:\n  - uses: copy\n    with:\n      sources: a\n      to: b\n      checksum: sha255\n",
        7,
    ),
    "wrong-type": (
        "recipe: x\nsteps:\n  - uses: copy\n    with:\n      sources: a\n      to: b\n      workers: many\n",
        7,
    ),
    "missing-parameter": ("recipe: x\nsteps:\n  - uses: copy\n    with:\n      sources: a\n", 4),
    "missing-with": ("recipe: x\nsteps:\n  - uses: copy\n", 3),
    "unknown-recipe-key": ("recipe: x\nstpes: []\nsteps:\n  - uses: noop\n", 2),
    "unknown-step-key": ("recipe: x\nsteps:\n  - uses: noop\n    wiht: {}\n", 4),
    "bad-step-id": ("recipe: x\nsteps:\n  - id: my-step\n    uses: noop\n", 3),
    "bad-timeout": ("recipe: x\nsteps:\n  - uses: noop\n    timeout: 5 minutes\n", 4),
    "packaged-recipe-input": (
        "recipe: x\nsteps:\n  - uses: nrao/deliver\n    with:\n      source_directory: a\n      prefx: b\n",
        6,
    ),
    "choice-without-choices": (
        "recipe: x\ninputs:\n  mode:\n    type: choice\nsteps:\n  - uses: noop\n",
        3,
    ),
    "positional-with-flags": (
        "recipe: x\ninputs:\n  src:\n    positional: true\n    flags: [--src]\nsteps:\n  - uses: noop\n",
        5,
    ),
    "bad-selector": ("recipe: x\non:\n  message: pipeline..EU*\nsteps:\n  - uses: noop\n", 3),
    "file-trigger-without-path": (
        "recipe: x\non:\n  file: incoming/*.tar\ninputs:\n  other: {}\nsteps:\n  - uses: noop\n",
        4,
    ),
    "default-of-wrong-type": (
        "recipe: x\ninputs:\n  n:\n    type: int\n    default: many\nsteps:\n  - uses: noop\n",
        5,
    ),
}


def _needs(path: Path, what: str) -> None:
    if path.exists() and shutil.which("node"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed (make tools installs it)")
    pytest.skip(f"{what} is not installed (make tools installs it under .tools/)")


def recipe_files() -> list[Path]:
    """Every recipe the project ships: packaged ones and examples."""
    files = sorted((ROOT / "engine" / "wsrun" / "packs").rglob("*.yaml")) + sorted(
        (ROOT / "examples").rglob("*.yaml")
    )
    return [f for f in files if re.search(r"^recipe:", f.read_text(), re.M)]


def doc_snippets() -> list[tuple[str, object]]:
    """Recipes and steps shown in the docs and in the step types' examples,
    each as a whole recipe."""
    out: list[tuple[str, object]] = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(re.finditer(r"```ya?ml\n(.*?)```", md.read_text(), re.S)):
            out.append((f"{md.name}#{i}", loader.load(str(md), m.group(1)).data))
    for name in step_names():
        for i, example in enumerate(load_step(name).EXAMPLES):
            out.append((f"steps/{name}#{i}", loader.load(name, example).data))
    recipes = []
    for where, data in out:
        if isinstance(data, dict) and "recipe" in data and "steps" in data:
            recipes.append((where, data))
        elif isinstance(data, dict) and "uses" in data:
            recipes.append((where, {"recipe": "snippet", "steps": [data]}))
        elif isinstance(data, list) and data and all(isinstance(s, dict) for s in data):
            if all("uses" in s for s in data):
                recipes.append((where, {"recipe": "snippet", "steps": data}))
    return recipes


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    for name, (text, _) in BAD.items():
        write(root / f"{name}.yaml", text)
    return root


@pytest.fixture(scope="module")
def validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_shipped_recipes_and_doc_snippets_are_accepted(validator) -> None:
    files = recipe_files()
    assert len(files) >= 22
    for path in files:
        errors = list(validator.iter_errors(loader.load(str(path)).data))
        assert not errors, f"{path}: {errors[0].message}"
    snippets = doc_snippets()
    assert len(snippets) > 60
    for where, data in snippets:
        errors = list(validator.iter_errors(data))
        assert not errors, f"{where}: {list(errors[0].absolute_path)}: {errors[0].message}"


def test_bad_recipes_are_rejected_by_validate_and_the_schema(cli, bad_dir: Path, validator) -> None:
    paths = [bad_dir / f"{name}.yaml" for name in BAD]
    for path in paths:
        assert list(validator.iter_errors(loader.load(str(path)).data)), path.name
    r = cli("validate", "--json", *paths)
    assert r.code == 2
    results = json.loads(r.out)
    assert [x["recipe"] for x in results] == [str(p) for p in paths]
    accepted = [x["recipe"] for x in results if x["ok"]]
    assert not accepted, "wsrun validate accepts these bad recipes"


def test_templates_are_accepted_exactly_where_a_value_is_rendered(validator) -> None:
    def ok(with_: dict, uses: str = "copy") -> bool:
        recipe = {"recipe": "x", "steps": [{"uses": uses, "with": with_}]}
        return not list(validator.iter_errors(recipe))

    base = {"sources": "a", "to": "b"}
    assert ok({**base, "workers": "{{ inputs.n }}", "checksum": "{{ inputs.sum }}"})
    assert ok({**base, "checksum": "sha{{ inputs.bits }}"})  # renders to text: may be an enum value
    assert not ok({**base, "workers": "{{ inputs.n }} workers"})  # text is never an integer
    assert not ok({**base, "workers": "many"})
    assert ok({"sources": ["{{ inputs.a }}", "b/{{ inputs.c }}"], "to": "b"})
    # A parameter the step renders itself keeps its own schema.
    assert ok({"content": "Hello {{ name }}", "to": "x.txt"}, uses="template")
    # Step keys that are never rendered take no template.
    recipe = {"recipe": "x", "steps": [{"uses": "noop", "continue_on_error": "{{ x }}"}]}
    assert list(validator.iter_errors(recipe))


def test_schema_command_prints_the_committed_schema(cli) -> None:
    r = cli("schema")
    assert r.code == 0 and json.loads(r.out) == json.loads(SCHEMA.read_text()) == full_schema()


def test_check_jsonschema_accepts_recipes_and_flags_bad_ones(bad_dir: Path) -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    good = recipe_files()
    proc = subprocess.run(
        [exe, "-o", "json", "--schemafile", SCHEMA, *good, *sorted(bad_dir.glob("*.yaml"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stdout)
    flagged = {Path(e["filename"]).stem for e in report["errors"]}
    assert not report["parse_errors"]
    assert flagged == set(BAD), proc.stdout


def test_ajv_strict_compiles_the_schema_and_agrees(bad_dir: Path) -> None:
    _needs(AJV, "ajv-cli")
    common = ["--spec=draft2020", "--strict=true", "-s", str(SCHEMA)]
    proc = subprocess.run([AJV, "compile", *common], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = [*recipe_files(), *sorted(bad_dir.glob("*.yaml"))]
    args = [x for f in files for x in ("-d", str(f))]
    proc = subprocess.run(
        [AJV, "validate", *common, "--errors=line", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    invalid = {Path(m).stem for m in re.findall(r"^(\S+) invalid$", output, re.M)}
    valid = re.findall(r"^(\S+) valid$", output, re.M)
    assert invalid == set(BAD), output
    assert len(valid) == len(recipe_files())


def test_yaml_language_server_agrees(bad_dir: Path) -> None:
    _needs(YAMLLS, "yaml-language-server")
    files = [*recipe_files(), *sorted(bad_dir.glob("*.yaml"))]
    proc = subprocess.run(
        ["node", ROOT / "tests" / "clients" / "yamlls-check.js", YAMLLS, SCHEMA, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {Path(d["file"]) for d in lines} == {Path(f) for f in files}
    problems: dict[str, list[tuple[int, str]]] = {}
    for d in lines:
        if "line" in d:
            problems.setdefault(Path(d["file"]).stem, []).append((d["line"], d["message"]))
    assert set(problems) == set(BAD), problems
    wrong = {n: problems[n] for n, (_, line) in BAD.items() if line not in dict(problems[n])}
    assert not wrong, wrong
