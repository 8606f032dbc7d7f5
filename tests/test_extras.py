"""Optional extras (``pip install 'wsrun[s3]'``, ...): the core works without any
of them, and whatever needs a missing one fails before the run starts, in one
line that says what to install.

Every test here runs wsrun in a subprocess whose imports of the extras' modules
fail, as they do when the distributions are not installed
(tests/fixtures/without_extras.py). tests/test_core_install.py installs the core
for real in a fresh venv.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from conftest import ROOT, CliResult, write
from wsrun.core import extras
from wsrun.core.step import load_step, step_names
from wsrun.stores.preflight import STEP_BACKENDS

HELPER = ROOT / "tests" / "fixtures" / "without_extras.py"
#: The top-level modules of every extra, what they pull in (boto3, aiohttp, ...),
#: and zstandard, which the core no longer uses (wsrun.core.zstd).
BLOCKED = sorted(
    {m for modules in extras.EXTRAS.values() for m in modules}
    | {"boto3", "botocore", "aiobotocore", "aiohttp", "python_multipart", "zstandard"}
)
NEEDS = re.compile(
    r"^(?P<what>.+) needs wsrun\[(?P<extra>\w+)\]: pip install 'wsrun\[(?P=extra)\]'$"
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def bare(*args: str, cwd: Path, env: dict[str, str] | None = None, blocked=BLOCKED) -> CliResult:
    """``wsrun ARGS`` with the ``blocked`` modules not importable."""
    import os

    proc = subprocess.run(
        [sys.executable, str(HELPER), ",".join(blocked), "--", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# ---- the one table --------------------------------------------------------------


def test_the_table_matches_pyproject() -> None:
    """wsrun.core.extras names exactly pyproject's extras, each module it checks comes
    with that extra, and no extra's distribution is in the core."""
    optional = PYPROJECT["optional-dependencies"]
    assert set(optional) == set(extras.EXTRAS) | {"all", "test"}
    assert optional["all"] == [f"wsrun[{','.join(extras.EXTRAS)}]"]
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    providers = packages_distributions()
    for extra, modules in extras.EXTRAS.items():
        names = {_name(r) for r in optional[extra]}
        assert not names & core, extra
        for module in modules:
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            assert dists & names, f"{module} is not installed by wsrun[{extra}] ({dists})"
    assert set(extras.PURPOSES) == set(extras.EXTRAS)


def test_steps_and_backends_in_the_table_exist() -> None:
    assert set(extras.STEP_EXTRAS) <= set(step_names())
    assert set(extras.STEP_EXTRAS.values()) <= set(extras.EXTRAS)
    assert set(extras.SCHEME_EXTRAS.values()) <= set(extras.EXTRAS)
    for name, (param, _) in STEP_BACKENDS.items():
        assert param in load_step(name).SCHEMA["properties"], name


# ---- the core without any extra --------------------------------------------------


def test_every_core_module_imports_without_the_extras(tmp_path: Path) -> None:
    """Only the amqp bus backend and the web application's own modules import an
    extra's package when they are imported; both are loaded only when used."""
    proc = subprocess.run(
        [sys.executable, str(HELPER), ",".join(BLOCKED), "--import-all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout)
    web = {m for m in failed if m.startswith("wsrun.web.")}
    assert set(failed) - web == {"wsrun.stores.bus.amqp"}, failed
    assert failed["wsrun.stores.bus.amqp"].split(".")[0] in extras.EXTRAS["amqp"]
    assert {failed[m].split(".")[0] for m in web} <= set(extras.EXTRAS["web"]), failed
    # What the command line loads for `wsrun serve` and `wsrun graph` is core.
    assert not {"wsrun.web", "wsrun.cli.serve", "wsrun.web.graph", "wsrun.web.config"} & web
    # and the blocking works: the same helper cannot import them
    r = bare("steps", cwd=tmp_path, blocked=["wsrun"])
    assert r.code != 0 and "No module named 'wsrun" in r.err


def test_the_command_line_works_without_the_extras(tmp_path: Path) -> None:
    for args in (["--help"], ["steps"], ["steps", "--json"], ["recipes"], ["schema"]):
        r = bare(*args, cwd=tmp_path)
        assert r.code == 0 and r.out and not r.err, (args, r.err)
    r = bare("steps", "s3-upload", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "needs: wsrun[s3] (not installed; pip install 'wsrun[s3]')" in r.out
    assert "sources" in r.out  # its parameters, documented all the same
    r = bare("graph", "nrao/deliver", cwd=tmp_path)
    assert r.code == 0 and r.out.startswith("digraph"), r.err


def test_packaged_recipes_validate_or_name_the_extra(tmp_path: Path) -> None:
    """The NRAO and ALMA tools need only the core; the Distillery's steps name
    their extras, each at the line of its `uses:`."""
    names = [line.split()[0] for line in bare("recipes", cwd=tmp_path).out.splitlines()]
    assert len(names) > 15
    r = bare("validate", "--json", *names, cwd=tmp_path)
    results = {x["recipe"]: x for x in json.loads(r.out)}
    assert set(results) == set(names)
    for name, result in results.items():
        if name.startswith(("nrao/", "alma/")):
            assert result["ok"], result
            continue
        for problem in result["problems"]:
            found = NEEDS.match(problem["message"])
            assert found, problem
            step = found["what"]
            assert extras.STEP_EXTRAS[step] == found["extra"]
            line = Path(problem["file"]).read_text().splitlines()[problem["line"] - 1]
            assert line[problem["col"] - 1 :].startswith(step), (problem, line)
            assert re.match(rf"\s*(- )?uses: {re.escape(step)}\s*$", line), line
    assert not results["distillery/distill"]["ok"]
    assert r.code == 2


S3_RECIPE = """\
recipe: upload
steps:
  - uses: mkdir
    with: {path: made}
  - uses: s3-upload
    with: {sources: made, to: "s3://bucket/prefix"}
"""


@pytest.mark.parametrize("mode", [["validate"], ["--dry-run"], []])
def test_a_step_whose_extra_is_missing_is_one_line_before_the_run(tmp_path, mode) -> None:
    recipe = write(tmp_path / "upload.yaml", S3_RECIPE)
    args = ["validate", recipe] if mode == ["validate"] else [recipe, *mode]
    r = bare(*args, cwd=tmp_path)
    assert r.code == 2
    assert r.err.splitlines() == [
        f"{recipe}:5:11: s3-upload needs wsrun[s3]: pip install 'wsrun[s3]'"
    ], r.err
    assert not (tmp_path / "made").exists()
    # with the extra (only other extras missing) the same recipe is valid
    others = [m for m in BLOCKED if m not in ("s3fs", "botocore", "aiobotocore", "aiohttp")]
    assert bare("validate", recipe, cwd=tmp_path, blocked=others).code == 0


@pytest.mark.parametrize("step", sorted(extras.STEP_EXTRAS))
def test_every_step_with_an_extra_names_it(tmp_path, step) -> None:
    recipe = write(tmp_path / "r.yaml", f"recipe: r\nsteps:\n  - uses: {step}\n    with: {{}}\n")
    r = bare("validate", recipe, cwd=tmp_path)
    extra = extras.STEP_EXTRAS[step]
    assert r.code == 2
    assert f"{recipe}:3:11: {step} needs wsrun[{extra}]: pip install 'wsrun[{extra}]'" in (
        r.err.splitlines()
    )


def test_a_called_recipe_is_checked_before_the_caller_starts(tmp_path) -> None:
    child = write(tmp_path / "child.yaml", S3_RECIPE.replace("made", "inner"))
    parent = write(
        tmp_path / "parent.yaml",
        "recipe: parent\nsteps:\n  - uses: mkdir\n    with: {path: made}\n  - uses: ./child.yaml\n",
    )
    r = bare(parent, cwd=tmp_path)
    assert r.code == 2
    assert r.err.splitlines() == [
        f"{child}:5:11: s3-upload needs wsrun[s3]: pip install 'wsrun[s3]'"
    ], r.err
    assert not (tmp_path / "made").exists() and not (tmp_path / "inner").exists()


def test_a_remembered_validation_notices_a_removed_extra(tmp_path) -> None:
    """Valid recipes are remembered (no re-check next run); the key includes
    whether the extras its steps need are installed."""
    recipe = write(tmp_path / "upload.yaml", S3_RECIPE)
    assert bare("validate", recipe, cwd=tmp_path, blocked=["nothing"]).code == 0
    r = bare("validate", recipe, cwd=tmp_path)
    assert r.code == 2 and "s3-upload needs wsrun[s3]" in r.err


# ---- backends chosen by URL ---------------------------------------------------------

STATE = "recipe: st\nsteps:\n  - uses: mkdir\n    with: {path: made}\n  - uses: %s\n    with: %s\n"
BACKENDS = [
    (
        {"WSRUN_STATE_URL": "postgresql://wsrun@127.0.0.1:1/none"},
        ("set-state", "{kind: ous, id: x, state: Ready, create: true}"),
        "postgresql:// state store needs wsrun[postgres]",
    ),
    (
        {},
        ("get-state", "{kind: ous, id: x, store: 'postgres://wsrun@127.0.0.1:1/none'}"),
        "postgres:// state store needs wsrun[postgres]",
    ),
    (
        {"WSRUN_BUS_URL": "amqp://guest:guest@127.0.0.1:1/"},
        ("publish", "{selector: a.b, body: {x: 1}}"),
        "amqp:// bus needs wsrun[amqp]",
    ),
    (
        {"WSRUN_ARCHIVE_URL": "postgresql://wsrun@127.0.0.1:1/none?files=/tmp/x"},
        ("archive-check", "{locators: ['uid://evla/x/1']}"),
        "postgresql:// archive needs wsrun[postgres]",
    ),
    (
        {"WSRUN_ARCHIVE_FILES": "s3://bucket/archive"},
        ("archive-check", "{locators: ['uid://evla/x/1']}"),
        "s3:// archive file store needs wsrun[s3]",
    ),
    (
        {"WSRUN_JOURNAL_URL": "postgresql://wsrun@127.0.0.1:1/none"},
        ("noop", "{}"),
        "postgresql:// journal needs wsrun[postgres]",
    ),
]


@pytest.mark.parametrize(("env", "step", "message"), BACKENDS)
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_backend_whose_extra_is_missing_fails_before_the_run(
    tmp_path, env, step, message, dry_run
) -> None:
    recipe = write(tmp_path / "st.yaml", STATE % step)
    assert bare("validate", recipe, cwd=tmp_path, env=env).code == 0  # the recipe is fine
    r = bare(recipe, *(["--dry-run"] if dry_run else []), cwd=tmp_path, env=env)
    assert r.code == 2
    extra = message.rsplit("[", 1)[1].rstrip("]")
    assert r.err.splitlines() == [f"st: {message}: pip install 'wsrun[{extra}]'"], r.err
    assert not (tmp_path / "made").exists()


def test_a_worker_refuses_to_start(tmp_path) -> None:
    recipe = write(
        tmp_path / "on.yaml",
        "recipe: listener\non: {message: a.b}\nsteps:\n  - uses: set-state\n"
        "    with: {kind: ous, id: x, state: Ready, create: true}\n",
    )
    r = bare(
        "worker", recipe, cwd=tmp_path, env={"WSRUN_STATE_URL": "postgresql://w@127.0.0.1:1/n"}
    )
    assert r.code == 2
    [line] = r.err.splitlines()
    assert line.endswith(
        f"{recipe}: postgresql:// state store needs wsrun[postgres]: pip install 'wsrun[postgres]'"
    ), line


def test_serve_and_db_name_their_extra(tmp_path) -> None:
    r = bare("serve", "--port", "1", cwd=tmp_path)
    assert (r.code, r.err.splitlines()) == (
        2,
        ["wsrun serve needs wsrun[web]: pip install 'wsrun[web]'"],
    )
    r = bare("db", "status", "--url", "postgresql://wsrun@127.0.0.1:1/none", cwd=tmp_path)
    assert (r.code, r.err.splitlines()) == (
        2,
        ["wsrun: postgresql:// database needs wsrun[postgres]: pip install 'wsrun[postgres]'"],
    )


def test_doctor_lists_the_extras(tmp_path) -> None:
    r = bare("doctor", "--json", cwd=tmp_path)
    assert r.code == 0, r.out + r.err
    rows = {c["url"]: c for c in json.loads(r.out) if c["backend"] == "extra"}
    assert set(rows) == {f"wsrun[{e}]" for e in extras.EXTRAS}
    assert all(c["ok"] and c["detail"].startswith("missing: ") for c in rows.values())
    assert "(pip install 'wsrun[s3]')" in rows["wsrun[s3]"]["detail"]
    # only s3 missing: the others show as installed (this suite runs with [all])
    r = bare("doctor", cwd=tmp_path, blocked=["s3fs"])
    lines = [line.split() for line in r.out.splitlines() if line.startswith("extra ")]
    assert {(w[1], w[2]) for w in lines} == {
        (f"wsrun[{e}]", "missing" if e == "s3" else "installed") for e in extras.EXTRAS
    }
    r = bare("doctor", cwd=tmp_path, env={"WSRUN_STATE_URL": "postgresql://w@127.0.0.1:1/n"})
    assert r.code == 1
    [state] = [line for line in r.out.splitlines() if line.startswith("state ")]
    assert "FAIL  postgresql:// state store needs wsrun[postgres]" in state
