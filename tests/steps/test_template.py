"""The template step: strict sandboxed rendering, filters, modes, dry runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import tree
from wsrun.core.effects import create_file
from wsrun.core.filters import FILTERS
from wsrun.core.fs import WorldView
from wsrun.core.step import StepContext, StepError, load_step, params_schema
from wsrun.testing import effect_dicts, plan_step, run_step


@pytest.fixture
def tpl(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "out").mkdir()
    path = tmp_path / "templates" / "README.j2"
    path.write_text(
        "Project {{ project }} <{{ owner }}> & co\n"
        "{% for f in files %}- {{ f | basename }} ({{ sizes[f] | filesizeformat }})\n{% endfor %}"
    )
    return path


VARS = {
    "project": "VLASS",
    "owner": "a&b",
    "files": ["/d/x.fits", "/d/y.fits"],
    "sizes": {"/d/x.fits": 2048, "/d/y.fits": 5},
}
EXPECTED = "Project VLASS <a&b> & co\n- x.fits (2.0 kB)\n- y.fits (5 Bytes)\n"


def test_schema_is_valid_and_documented() -> None:
    module = load_step("template")
    schema = params_schema(module)
    jsonschema.Draft202012Validator.check_schema(schema)
    for name, prop in module.SCHEMA["properties"].items():
        assert prop.get("description"), name
    validator = jsonschema.Draft202012Validator(params_schema(module))
    for example in module.EXAMPLES:
        (step,) = yaml.safe_load(example)
        assert step["uses"] == module.NAME
        validator.validate(step["with"])
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"src": "a", "to": "b"})
    assert not validator.is_valid({"src": "a", "content": "x", "to": "b"})
    assert not validator.is_valid({"to": "b"})


def test_renders_a_file(tpl: Path, tmp_path: Path) -> None:
    params = {"src": "templates/README.j2", "to": "out/README", "vars": VARS}
    plan, result = run_step("template", params, str(tmp_path))
    out = tmp_path / "out" / "README"
    assert out.read_text() == EXPECTED
    assert out.stat().st_mode & 0o777 == 0o644
    assert result.outputs == {"file": str(out)}
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert effect_dicts(result.effects) == [
        {"op": "create_file", "path": str(out), "bytes": len(EXPECTED.encode())}
    ]


def test_inline_content_keeps_trailing_newline_and_unicode(tmp_path: Path) -> None:
    params = {
        "content": "{{ a }} → {{ b | to_json }}\n\n",
        "to": "o.txt",
        "vars": {"a": "é", "b": [1, "<x>"]},
    }
    run_step("template", params, str(tmp_path))
    assert (tmp_path / "o.txt").read_text(encoding="utf-8") == 'é → [1, "<x>"]\n\n'


def test_filters(tmp_path: Path) -> None:
    content = (
        "{{ p | basename }}|{{ p | dirname }}|{{ p | dirname | joinpath('c', 'd.txt') }}|"
        "{{ p | relpath('/a') }}|{{ ('{\"k\": [1, 2]}' | from_json).k[1] }}|"
        "{{ {'b': 1, 'a': 'ü'} | to_json(sort_keys=true) }}|{{ 1500000 | filesizeformat }}"
    )
    run_step(
        "template", {"content": content, "to": "o", "vars": {"p": "/a/b/x.fits"}}, str(tmp_path)
    )
    assert (tmp_path / "o").read_text() == (
        'x.fits|/a/b|/a/b/c/d.txt|b/x.fits|2|{"a": "ü", "b": 1}|1.5 MB'
    )
    assert set(FILTERS) == {
        "basename",
        "dirname",
        "joinpath",
        "relpath",
        "to_json",
        "from_json",
        "b64encode",
        "b64decode",
        "token_hex",
    }
    tokens = {FILTERS["token_hex"](16) for _ in range(3)}
    assert len(tokens) == 3 and all(re.fullmatch("[0-9a-f]{32}", t) for t in tokens)
    for bad in (0, 65, "16", True):
        with pytest.raises(ValueError, match="token_hex takes"):
            FILTERS["token_hex"](bad)
    assert json.loads(FILTERS["to_json"]({"x": [1]}, indent=2)) == {"x": [1]}
    assert FILTERS["b64decode"](FILTERS["b64encode"]("<report>ü</report>")) == "<report>ü</report>"
    with pytest.raises(ValueError, match="not base64"):
        FILTERS["b64decode"]("%%%")


def test_undefined_name_fails_with_template_and_line(tpl: Path, tmp_path: Path) -> None:
    before = tree(tmp_path)
    params = {"src": "templates/README.j2", "to": "out/README", "vars": {"project": "P"}}
    with pytest.raises(StepError) as err:
        run_step("template", params, str(tmp_path))
    assert err.value.path == str(tpl)
    assert str(err.value) == f"{tpl}: line 1: 'owner' is undefined"
    assert tree(tmp_path) == before


def test_undefined_attribute_and_inline_template(tmp_path: Path) -> None:
    params = {"content": "ok\n\n{{ d.missing }}\n", "to": "o", "vars": {"d": {}}}
    with pytest.raises(StepError, match=r"line 3: 'dict object' has no attribute 'missing'") as err:
        run_step("template", params, str(tmp_path))
    assert "inline template" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_syntax_sandbox_and_filter_errors(tmp_path: Path) -> None:
    cases = {
        "a\n{% if %}\n": r"line 2: Expected an expression",
        "{{ ''.__class__.__mro__ }}": r"line 1: .*unsafe",
        "x\n{{ 'not json' | from_json }}": r"line 2: Expecting value",
        "{{ 1 | nosuchfilter }}": r"line 1: .*nosuchfilter",
    }
    for content, pattern in cases.items():
        with pytest.raises(StepError, match=pattern):
            run_step("template", {"content": content, "to": "o"}, str(tmp_path))
    assert not (tmp_path / "o").exists()


def test_includes_are_relative_to_the_template(tpl: Path, tmp_path: Path) -> None:
    (tmp_path / "templates" / "part.j2").write_text("part {{ x }}\n\n{{ y }}")
    (tmp_path / "templates" / "main.j2").write_text("main\n{% include 'part.j2' %}\n")
    params = {"src": "templates/main.j2", "to": "out/m", "vars": {"x": 1, "y": 2}}
    run_step("template", params, str(tmp_path))
    assert (tmp_path / "out" / "m").read_text() == "main\npart 1\n\n2\n"
    with pytest.raises(StepError) as err:
        run_step("template", {**params, "vars": {"x": 1}}, str(tmp_path))
    assert str(err.value) == f"{tmp_path / 'templates' / 'part.j2'}: line 3: 'y' is undefined"
    with pytest.raises(StepError, match="nope.j2"):
        run_step("template", {"content": "{% include 'nope.j2' %}", "to": "o"}, str(tmp_path))
    with pytest.raises(StepError, match=r"\.\./"):
        run_step("template", {"content": "{% include '../x' %}", "to": "o"}, str(tmp_path))


def test_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="exactly one"):
        run_step("template", {"to": "o"}, str(tmp_path))
    with pytest.raises(StepError, match="exactly one"):
        run_step("template", {"to": "o", "src": "a", "content": "b"}, str(tmp_path))
    with pytest.raises(StepError, match="no such template file"):
        run_step("template", {"to": "o", "src": "missing.j2"}, str(tmp_path))
    (tmp_path / "bad.j2").write_bytes(b"\xff\xfe")
    with pytest.raises(StepError, match="not UTF-8"):
        run_step("template", {"to": "o", "src": "bad.j2"}, str(tmp_path))


def test_output_errors(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="directory does not exist"):
        run_step("template", {"content": "x", "to": "missing/o"}, str(tmp_path))
    (tmp_path / "adir").mkdir()
    with pytest.raises(StepError, match="not a regular file"):
        run_step("template", {"content": "x", "to": "adir"}, str(tmp_path))
    with pytest.raises(StepError, match="octal"):
        run_step("template", {"content": "x", "to": "o", "mode": "rw"}, str(tmp_path))


def test_mode_and_idempotency(tmp_path: Path) -> None:
    params = {"content": "hi {{ n }}\n", "to": "o", "vars": {"n": 1}, "mode": "0600"}
    run_step("template", params, str(tmp_path))
    out = tmp_path / "o"
    assert out.stat().st_mode & 0o777 == 0o600
    mtime = out.stat().st_mtime_ns
    plan, result = run_step("template", params, str(tmp_path))
    assert plan.effects == result.effects == [] and result.status == "ok"
    assert out.stat().st_mtime_ns == mtime

    plan, _ = run_step("template", {**params, "mode": 0o640}, str(tmp_path))  # mode only
    assert effect_dicts(plan.effects)[0]["mode"] == 0o640
    assert out.stat().st_mode & 0o777 == 0o640

    no_mode = {k: v for k, v in params.items() if k != "mode"}
    assert run_step("template", no_mode, str(tmp_path))[1].effects == []
    run_step("template", {**no_mode, "vars": {"n": 2}}, str(tmp_path))
    assert out.read_text() == "hi 2\n"
    assert out.stat().st_mode & 0o777 == 0o640  # kept from the existing file


def test_dry_run_writes_nothing_and_plans_the_real_effects(tpl: Path, tmp_path: Path) -> None:
    params = {"src": "templates/README.j2", "to": "out/README", "vars": VARS, "mode": 0o600}
    before = tree(tmp_path)
    dry = plan_step("template", params, str(tmp_path), view=WorldView())
    assert tree(tmp_path) == before
    assert dry.effects[0].content == EXPECTED.encode()
    _, result = run_step("template", params, str(tmp_path))
    assert effect_dicts(dry.effects) == effect_dicts(result.effects)


def test_dry_run_chain_renders_a_planned_template(tmp_path: Path) -> None:
    view = WorldView()
    first = plan_step(
        "template", {"content": "{{ '{{' }} greeting {{ '}}' }}, {{ who }}\n", "to": "gen.j2",
                     "vars": {"who": "world"}},
        str(tmp_path), view=view,
    )  # fmt: skip
    for e in first.effects:
        view.record(e)
    second = plan_step(
        "template", {"src": "gen.j2", "to": "out.txt", "vars": {"greeting": "hello"}},
        str(tmp_path), view=view,
    )  # fmt: skip
    assert second.effects[0].content == b"hello, world\n"
    assert tree(tmp_path) == {}


def test_dry_run_with_unknown_template_content(tmp_path: Path) -> None:
    view = WorldView()
    view.record(create_file(str(tmp_path / "unpacked.j2"), bytes=10))
    plan = plan_step("template", {"src": "unpacked.j2", "to": "o"}, str(tmp_path), view=view)
    assert effect_dicts(plan.effects) == [{"op": "create_file", "path": str(tmp_path / "o")}]
    assert plan.effects[0].content is None


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_step("template")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = module.plan({"content": "x" * 100_000, "to": "o"}, ctx)

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr("wsrun.core.fileio.os.replace", fail)
    with pytest.raises(OSError):
        module.apply(plan, ctx)
    assert tree(tmp_path) == {}
