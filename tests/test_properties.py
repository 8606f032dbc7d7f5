"""Property-based tests (Hypothesis) of the loader, validation and expressions.

Derandomized with a bounded number of examples: the same inputs on every run,
so a failure is a defect to fix, never a flake. `make fuzz` explores further.
"""

from __future__ import annotations

import string
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_recipes import FRAGMENTS, NAMES, mutated, recipes
from wsrun.core import expr
from wsrun.core.loader import Document, YamlError, decode, load
from wsrun.core.recipe import Recipe
from wsrun.core.validate import check

PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None)

keys = st.text(string.ascii_letters + "_", min_size=1, max_size=6)
# PyYAML's emitter mangles the Unicode line breaks (NEL, LS, PS) in plain text
texts = st.text(st.characters(exclude_characters="\x85\u2028\u2029"), max_size=30)
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys | texts, inner, max_size=4)
    ),
    max_leaves=20,
)


def _lines(text: str) -> int:
    return text.count("\n") + 1


@PROPERTY
@given(
    st.one_of(st.binary(max_size=200), mutated(json_like.map(lambda d: yaml.safe_dump(d).encode())))
)
def test_loader_answers_any_bytes_with_a_document_or_a_positioned_error(raw: bytes) -> None:
    try:
        doc = load("f.yaml", decode("f.yaml", raw))
    except YamlError as e:
        text = raw.decode("utf-8", errors="replace")
        assert 1 <= e.where.line <= _lines(text) and e.where.col >= 1, (e, raw)
        assert str(e).startswith(f"f.yaml:{e.where.line}:{e.where.col}: ")
        return
    assert isinstance(doc, Document)


@PROPERTY
@given(json_like)
def test_loader_reads_back_what_yaml_writes_and_marks_every_value(data: Any) -> None:
    text = yaml.safe_dump({"v": data}, allow_unicode=True)
    doc = load("f.yaml", text)
    assert doc.data == {"v": data}
    for path, where in doc.marks.items():
        assert 1 <= where.line <= _lines(text), (path, where)

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        assert path in doc.marks, path
        if isinstance(value, (dict, list)):
            for k, v in value.items() if isinstance(value, dict) else enumerate(value):
                walk(v, path + (k,))

    walk(doc.data, ())


@PROPERTY
@given(recipes)
def test_validation_answers_any_recipe_with_positioned_problems(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    try:
        doc = load("/r/recipe.yaml", text)
    except YamlError:
        return  # e.g. a deep expression list: the loader's answer is tested above
    problems = check(Recipe("/r/recipe.yaml", doc))
    for p in problems:
        assert 1 <= p.where.line <= _lines(text) and p.message, p
        assert p.format().startswith(f"/r/recipe.yaml:{p.where.line}:{p.where.col}: ")


@PROPERTY
@given(st.lists(st.sampled_from(FRAGMENTS + NAMES), min_size=1, max_size=20))
def test_any_expression_ends_in_a_value_or_an_expression_error(parts: list[str]) -> None:
    text = "{{ " + " ".join(parts) + " }}"
    scope = {"inputs": {"a": 1, "src": "/d"}, "vars": {}, "steps": {}, "env": {}, "x": [1, 2]}
    try:
        list(expr.references(text))
        expr.compile_check(text)
        expr.evaluate(text, scope)
    except expr.ExpressionError as e:
        assert e.message


arithmetic = st.recursive(
    st.integers(-1000, 1000).map(str),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(" ".join),
        inner.map(lambda e: f"({e})"),
    ),
    max_leaves=12,
)


@PROPERTY
@given(arithmetic)
def test_integer_arithmetic_means_what_python_means(text: str) -> None:
    assert expr.evaluate("{{ " + text + " }}", {}) == eval(text)  # noqa: S307 (digits and + - * only)


scopes = st.recursive(
    st.one_of(st.integers(), st.text(max_size=10), st.booleans()),
    lambda inner: st.dictionaries(
        st.sampled_from(["a", "b", "copy", "items", "x_1"]), inner, max_size=3
    ),
    max_leaves=10,
)


def _paths(value: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    return out


@PROPERTY
@given(st.dictionaries(st.sampled_from(["inputs", "vars", "steps"]), scopes, min_size=1), st.data())
def test_plain_names_take_the_fast_path_to_the_same_value_as_jinja(
    scope: dict[str, Any], data: st.DataObject
) -> None:
    chain = data.draw(st.sampled_from(_paths(scope, ())))
    name = ".".join(chain)
    value: Any = scope
    for key in chain:
        value = value[key]
    assert expr.evaluate("{{ " + name + " }}", scope) == value
    # parentheses make it more than a name: Jinja evaluates it, keys before attributes
    assert expr.evaluate("{{ (" + name + ") }}", scope) == value
    assert expr.evaluate("<{{ " + name + " }}>", scope) == f"<{value}>"
    assert expr.evaluate(name, scope, bare=True) == value
