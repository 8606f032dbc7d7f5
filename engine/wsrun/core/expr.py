"""Recipe expressions: Jinja2 in a sandbox, strict about unknown names.

A value that is exactly one ``{{ expression }}`` keeps its native type (a list
stays a list, a bool a bool); any other string with ``{{`` is rendered as text.
``if:`` and ``for_each:`` also take a bare expression, as in GitHub Actions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

_SINGLE = re.compile(r"^\s*\{\{(.*)\}\}\s*$", re.DOTALL)

#: Names every expression may use besides the scope (Jinja's own globals).
JINJA_GLOBALS = frozenset(
    {"range", "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none"}
)


class ExpressionError(Exception):
    """An expression failed to parse or evaluate; ``line`` is within the expression."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class UnsafeExpression(ExpressionError):
    """The sandbox refused an expression: an unsafe attribute, or a result too large."""


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


#: Deepest nesting of brackets in an expression (Jinja's parser recurses).
MAX_NESTING = 50


@lru_cache(maxsize=1)
def environment() -> Any:
    """The environment of recipe expressions; imported on first use, since
    plain names (the common case) never need it."""
    from jinja2 import StrictUndefined

    from wsrun.core.sandbox import bounded_sandbox

    return bounded_sandbox(
        recipe=True, undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


def _single_expression(text: str) -> str | None:
    m = _SINGLE.match(text)
    if m and "{{" not in m.group(1) and "}}" not in m.group(1):
        return m.group(1)
    return None


@lru_cache(maxsize=4096)
def _compiled(text: str, bare: bool) -> Any:
    env = environment()
    expr = text if bare and not is_template(text) else _single_expression(text)
    with _syntax_errors(text):
        if expr is not None:
            return ("expr", env.compile_expression(expr, undefined_to_none=False))
        return ("template", env.from_string(text))


def needs_jinja(text: str, bare: bool = False) -> bool:
    """False for text that is plain names (``{{ inputs.src }}/x``), which is
    evaluated without compiling a template."""
    return _simple(text, bare) is None


def compile_check(text: str, bare: bool = False) -> None:
    """Raise ExpressionError when ``text`` would not compile (unknown filter or
    test, too deep); ``wsrun validate`` calls it so a run never meets one."""
    if needs_jinja(text, bare):
        _compiled(text, bare)


@contextmanager
def _syntax_errors(text: str) -> Iterator[None]:
    """Jinja's syntax errors, unknown filters and parser recursion as one
    ExpressionError worded for authors."""
    from jinja2.exceptions import TemplateSyntaxError

    depth = _nesting(text)
    if depth > MAX_NESTING:
        raise ExpressionError(f"expression nests brackets {depth} deep (at most {MAX_NESTING})")
    try:
        yield
    except TemplateSyntaxError as e:
        raise ExpressionError(_syntax_message(e.message or str(e)), e.lineno) from None
    except (RecursionError, MemoryError, SyntaxError):
        raise ExpressionError("expression too complex (split it into vars:)") from None


def _nesting(text: str) -> int:
    depth = deepest = 0
    for c in text:
        if c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth = max(0, depth - 1)
    return deepest - 2 if "{{" in text or "{%" in text else deepest  # the braces of {{ }}


def _syntax_message(message: str) -> str:
    """ "No filter named 'lenght'." -> "unknown filter 'lenght' (did you mean 'length'?)"."""
    m = re.match(r"No (filter|test) named '(.*)'", message)
    if m:
        env = environment()
        names = env.filters if m.group(1) == "filter" else env.tests
        return f"unknown {m.group(1)} '{m.group(2)}'{did_you_mean(m.group(2), names)}"
    return f"expression syntax: {message}"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest known name, or ""."""
    import difflib

    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_SIMPLE_PART = re.compile(r"\{\{\s*(" + _NAME + r")\s*\}\}")
_BARE_NAME = re.compile(r"^\s*(" + _NAME + r")\s*$")


@lru_cache(maxsize=4096)
def _simple(text: str, bare: bool) -> tuple[Any, ...] | None:
    """Most recipe values are plain dotted names (``{{ inputs.src }}/x``); they
    are looked up directly instead of compiling a Jinja template (~2 ms each).
    Returns ("one", chain) for a single name, ("parts", [str | chain]) for text
    with names in it, or None when Jinja is needed."""
    if bare and not is_template(text):
        m = _BARE_NAME.match(text)
        return ("one", tuple(m.group(1).split("."))) if m else None
    if "{%" in text or "{#" in text:
        return None
    single = _single_expression(text)
    if single is not None:
        m = _BARE_NAME.match(single)
        return ("one", tuple(m.group(1).split("."))) if m else None
    parts: list[Any] = []
    pos = 0
    for m in _SIMPLE_PART.finditer(text):
        parts.append(text[pos : m.start()])
        parts.append(tuple(m.group(1).split(".")))
        pos = m.end()
    parts.append(text[pos:])
    if any("{{" in p or "}}" in p for p in parts if isinstance(p, str)):
        return None  # an expression that is more than a name
    return ("parts", parts)


class _NeedsJinja(Exception):
    pass


def _lookup(chain: tuple[str, ...], scope: Mapping[str, Any]) -> Any:
    if chain[0] not in scope:
        if chain[0] in JINJA_GLOBALS:
            raise _NeedsJinja
        raise ExpressionError(f"unknown name '{chain[0]}'")
    value = scope[chain[0]]
    for key in chain[1:]:
        if not isinstance(value, Mapping):
            raise _NeedsJinja  # attribute access on an object: Jinja's sandbox decides
        try:
            value = value[key]
        except KeyError:
            raise ExpressionError(f"unknown name '{key}'") from None
    return value


def evaluate(text: str, scope: Mapping[str, Any], bare: bool = False) -> Any:
    """Evaluate one string; ``bare`` treats text without braces as an expression."""
    if not bare and not is_template(text):
        return text
    simple = _simple(text, bare)
    if simple is not None:
        try:
            if simple[0] == "one":
                return _lookup(simple[1], scope)
            return "".join(p if isinstance(p, str) else str(_lookup(p, scope)) for p in simple[1])
        except _NeedsJinja:
            pass
    from jinja2.exceptions import SecurityError, UndefinedError
    from jinja2.runtime import Undefined

    kind, compiled = _compiled(text, bare)
    try:
        if kind == "expr":
            value = compiled(**scope)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            return value
        return compiled.render(**scope)
    except UndefinedError as e:
        raise ExpressionError(_undefined_message(str(e))) from None
    except ExpressionError:
        raise
    except SecurityError as e:
        raise UnsafeExpression(f"SecurityError: {e}") from None
    except Exception as e:  # a filter or operation failed inside the expression
        raise ExpressionError(f"{type(e).__name__}: {e}") from None


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Evaluate every string inside a value (dicts and lists are walked)."""
    if isinstance(value, str):
        return evaluate(value, scope) if ("{" in value) else value
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    return value


def _undefined_message(message: str) -> str:
    # Jinja says "'dict object' has no attribute 'x'": say what the user wrote.
    m = re.match(r"'dict object' has no attribute '(.*)'", message)
    if m:
        return f"unknown name '{m.group(1)}'"
    m = re.match(r"'(.*)' is undefined", message)
    if m:
        return f"unknown name '{m.group(1)}'"
    return message


def references(text: str, bare: bool = False) -> Iterator[tuple[str, ...]]:
    """The dotted names an expression reads, e.g. ('steps', 'copy', 'outputs', 'files').

    Raises ExpressionError for a syntax error. Names the template defines itself
    (``{% set %}``, loop variables) are not reported.
    """
    simple = _simple(text, bare)
    if simple is not None:
        chains = (
            [simple[1]] if simple[0] == "one" else [p for p in simple[1] if not isinstance(p, str)]
        )
        for chain in chains:
            if chain[0] not in JINJA_GLOBALS:
                yield chain
        return
    from jinja2 import meta

    env = environment()
    source = text
    if bare and not is_template(text):
        source = "{{ " + text + " }}"
    with _syntax_errors(source):
        ast = env.parse(source)
        free = meta.find_undeclared_variables(ast)
    from jinja2 import nodes

    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        chain = _chain(node)
        if chain and chain[0] in free:
            yield chain


def _chain(node: Any) -> tuple[str, ...] | None:
    from jinja2 import nodes

    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            parts.clear()  # a computed key: only what is before it is known
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


class LazyVars(Mapping[str, Any]):
    """``vars:`` evaluated on first use, so a var may use inputs, settings,
    earlier vars and the outputs of steps that have run."""

    def __init__(self, raw: Mapping[str, Any], scope: dict[str, Any]) -> None:
        self._raw = raw
        self._scope = scope
        self._done: dict[str, Any] = {}
        self._busy: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        if key in self._done:
            return self._done[key]
        if key not in self._raw:
            raise KeyError(key)
        if key in self._busy:
            raise ExpressionError(f"vars.{key} refers to itself")
        self._busy.add(key)
        try:
            value = render(self._raw[key], self._scope)
        finally:
            self._busy.discard(key)
        self._done[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)
