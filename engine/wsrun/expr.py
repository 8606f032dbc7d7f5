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


#: Longest string or list one operation in an expression may build, and the
#: most bits an integer power may have: ``{{ "x" * 10**10 }}`` is an error,
#: not 10 GB.
MAX_SIZE = 1_000_000
MAX_POWER_BITS = 100_000
#: Most characters a template (or a recipe value with text around ``{{ }}``)
#: renders, or a list or mapping built in an expression holds.
MAX_RENDERED = 256_000_000
#: Most loop iterations one rendering may run (about a second of work).
MAX_ITERATIONS = 1_000_000
#: Deepest nesting of brackets in an expression (Jinja's parser recurses).
MAX_NESTING = 50
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


def _too_big(size: int) -> None:
    if size > MAX_SIZE:
        from jinja2.exceptions import SecurityError

        raise SecurityError(f"the result would have {size} items (at most {MAX_SIZE})")


def weigh(value: Any, limit: int = MAX_RENDERED) -> None:
    """Refuse a value whose text would pass ``limit`` characters, stopping as
    soon as it does: a list may hold the same long string many times."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
            total += len(item)
        elif isinstance(item, dict):  # not LazyVars: weighing must not evaluate
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 8
        if total > limit:
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"the value's text passes {limit} characters")


def _sized(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


def _bounded_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too large, before computing it."""
    if operator == "*":
        if isinstance(left, int) and _sized(right):
            left, right = right, left
        if _sized(left) and isinstance(right, int) and right > 0:
            _too_big(len(left) * right)
            if isinstance(left, (list, tuple)):
                weigh(left, MAX_RENDERED // right)  # its items, repeated
    elif operator == "+" and _sized(left) and _sized(right):
        _too_big(len(left) + len(right))
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        if abs(left) > 1 and right * abs(left).bit_length() > MAX_POWER_BITS:
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"{left} ** {right} is too large")
    elif operator == "%" and isinstance(left, str):
        _bounded_format(left, right)


def _bounded_format(text: str, args: Any) -> None:
    numbers = args if isinstance(args, tuple) else (args,)
    for width, precision in _FORMAT_WIDTH.findall(text):
        for n in (width, precision):
            if n == "*":
                _too_big(max((a for a in numbers if isinstance(a, int)), default=0))
            elif n:
                _too_big(int(n) if len(n) <= 7 else MAX_SIZE + 1)


def _bounded_filters() -> dict[str, Any]:
    """Jinja's filters that can build a huge string from small arguments, with
    the size of their result checked first."""
    from jinja2 import filters as jf
    from jinja2.utils import pass_eval_context

    def center(value: Any, width: int = 80) -> str:
        _too_big(width if isinstance(width, int) else 0)
        return jf.do_center(value, width)

    def indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        if isinstance(width, int):
            _too_big(width * (str(s).count("\n") + 1) + len(str(s)))
        return jf.do_indent(s, width, first, blank)

    def format_(value: Any, *args: Any, **kwargs: Any) -> str:
        _bounded_format(str(value), args)
        return jf.do_format(value, *args, **kwargs)

    @pass_eval_context
    def replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
        text, old_, new_ = str(s), str(old), str(new)
        hits = text.count(old_) if old_ else len(text) + 1
        if count is not None and count >= 0:
            hits = min(hits, count)
        _too_big(len(text) + hits * max(0, len(new_) - len(old_)))
        return jf.do_replace(eval_ctx, s, old, new, count)

    @pass_eval_context
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        if isinstance(value, (list, tuple)):
            weigh(value)
            weigh(d, MAX_RENDERED // max(1, len(value)))
        return jf.do_join(eval_ctx, value, d, attribute)  # type: ignore[no-any-return]

    return {
        "center": center,
        "indent": indent,
        "format": format_,
        "replace": replace,
        "join": join,
    }


def _bounded_str_format(template: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``"{:>999999999}".format(x)``: refuse widths past MAX_SIZE, given in
    the template or (``{:{w}}``) as an argument."""
    import string

    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(template)]
    except ValueError:
        return  # str.format reports the malformed template itself
    for spec in specs:
        for n in re.findall(r"\d+", spec):
            _too_big(int(n) if len(n) <= 7 else MAX_SIZE + 1)
        if "{" in spec:
            for a in (*args, *kwargs.values()):
                if isinstance(a, int):
                    _too_big(a)


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    from jinja2.utils import generate_lorem_ipsum

    _too_big(n * max * 8)
    return generate_lorem_ipsum(n, html, min, max)


@lru_cache(maxsize=1)
def _sandbox_classes() -> tuple[type, type]:
    """A sandbox that computes nothing while compiling and checks sizes.

    Jinja folds constant parts of a template at compile time (``"x" * 10**10``
    would be built there, outside any check), so folding is off, and the
    operators and filters that can build large values check the size of their
    result first. Returns (for templates, for recipe expressions)."""
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

    class NoFolding(CodeGenerator):
        def _output_child_to_const(self, node: Any, frame: Any, finalize: Any) -> str:
            if isinstance(node, nodes.TemplateData):
                return super()._output_child_to_const(node, frame, finalize)
            raise nodes.Impossible()

        def _weighed(self, visit: Any, node: Any, frame: Any) -> None:
            self.write("environment.weighed(")
            visit(node, frame)
            self.write(")")

        def visit_List(self, node: Any, frame: Any) -> None:
            """A literal may name one long string many times: weighed when built."""
            self._weighed(super().visit_List, node, frame)

        def visit_Dict(self, node: Any, frame: Any) -> None:
            self._weighed(super().visit_Dict, node, frame)

        def visit_Tuple(self, node: Any, frame: Any) -> None:
            if node.ctx == "load":
                self._weighed(super().visit_Tuple, node, frame)
            else:  # the names a loop or {% set %} assigns
                super().visit_Tuple(node, frame)

        def visit_Concat(self, node: Any, frame: Any) -> None:
            """``a ~ b ~ c`` through a join that checks the size first (autoescape
            is off everywhere wsrun renders, so no Markup is involved)."""
            self.write("environment.bounded_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Bounded(SandboxedEnvironment):
        code_generator_class = NoFolding
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def _parse(self, source: str, name: Any, filename: Any) -> Any:
            """Every ``{% for %}`` iterates through the ``wsrun_counted`` filter."""
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Filter(loop.iter, "wsrun_counted", [], [], None, None)
                loop.iter.set_lineno(loop.lineno)
            return tree

        @staticmethod
        def weighed(value: Any) -> Any:
            weigh(value)
            return value

        @staticmethod
        def bounded_join(parts: Iterable[Any]) -> str:
            texts = [str(p) for p in parts]
            _too_big(sum(map(len, texts)))
            return "".join(texts)

        @staticmethod
        def concat(parts: Iterable[str]) -> str:
            """A template's output, refused once it passes MAX_RENDERED (a loop
            can repeat a value that is within MAX_SIZE many times)."""
            out, size = [], 0
            for part in parts:
                size += len(part)
                if size > MAX_RENDERED:
                    from jinja2.exceptions import SecurityError

                    raise SecurityError(f"the rendered text passes {MAX_RENDERED} characters")
                out.append(part)
            return "".join(out)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _bounded_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value: Any) -> Any:
            fmt = super().wrap_str_format(value)
            if fmt is None:
                return None
            template = value.__self__

            def checked(*args: Any, **kwargs: Any) -> str:
                _bounded_str_format(template, args, kwargs)
                return fmt(*args, **kwargs)

            return checked

    class RecipeEnvironment(Bounded, ImmutableSandboxedEnvironment):
        """Keys before attributes: ``steps.copy`` is the step with id ``copy``,
        not the dict method ``copy``."""

        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and isinstance(attribute, str):
                try:
                    return obj[attribute]
                except KeyError:
                    pass
            return super().getattr(obj, attribute)

    return Bounded, RecipeEnvironment


def bounded_sandbox(recipe: bool = False, **options: Any) -> Any:
    """A sandboxed Jinja environment with wsrun's filters and the size checks
    of recipe expressions (the template step renders files with it)."""
    from jinja2 import pass_context

    from wsrun.filters import FILTERS

    env = _sandbox_classes()[1 if recipe else 0](optimized=False, **options)
    env.filters.update(_bounded_filters())
    env.filters.update(FILTERS)
    env.globals["lipsum"] = _bounded_lipsum
    env.filters["wsrun_counted"] = pass_context(_counted)
    env.finalize = _finalize
    return env


def _counted(context: Any, iterable: Any) -> Iterator[Any]:
    """The items of a loop, counted against MAX_ITERATIONS for the whole
    rendering: nested loops over bounded ranges multiply."""
    for item in iterable:
        done = getattr(context, "wsrun_iterations", 0) + 1
        if done > MAX_ITERATIONS:
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"loops ran more than {MAX_ITERATIONS} times")
        context.wsrun_iterations = done
        yield item


def _finalize(value: Any) -> Any:
    """Each ``{{ value }}`` a template writes is weighed before it becomes text."""
    weigh(value)
    return value


@lru_cache(maxsize=1)
def environment() -> Any:
    """The environment of recipe expressions; imported on first use, since
    plain names (the common case) never need it."""
    from jinja2 import StrictUndefined

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
