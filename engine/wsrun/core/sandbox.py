"""Jinja's sandbox, bounded: no template or expression can build gigabytes
or loop for hours, however it is written.

Jinja folds constant parts of a template at compile time (``"x" * 10**10``
would be built there, outside any check), so folding is off; the operators,
filters and literals that can build large values check the size of their
result first; a template's output and its loops are counted. Recipe
expressions (``wsrun.core.expr``) and the template step both render here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

#: Longest string or list one operation in an expression may build, and the
#: most bits an integer power may have: ``{{ "x" * 10**10 }}`` is an error,
#: not 10 GB.
MAX_SIZE = 1_000_000
MAX_POWER_BITS = 100_000
#: Most characters a template (or a recipe value with text around ``{{ }}``)
#: renders, or a list or mapping built in an expression holds.
MAX_RENDERED = 256_000_000
#: Most loop iterations and calls one rendering may run (about a second of work).
MAX_ITERATIONS = 1_000_000
CALL_UNITS = 4
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

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _spend(__context, CALL_UNITS)
            return super().call(__context, __obj, *args, **kwargs)

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
    """A bounded sandboxed Jinja environment with wsrun's filters: for the
    template step, or (``recipe``) for recipe expressions, which are immutable
    and look keys up before attributes."""
    from jinja2 import pass_context

    from wsrun.core.filters import FILTERS

    env = _sandbox_classes()[1 if recipe else 0](optimized=False, **options)
    env.filters.update(_bounded_filters())
    env.filters.update(FILTERS)
    env.globals["lipsum"] = _bounded_lipsum
    env.filters["wsrun_counted"] = pass_context(_counted)
    env.finalize = _finalize
    return env


def _spend(context: Any, units: int = 1) -> None:
    """A loop iteration (one unit) or a call (CALL_UNITS, being slower) of a
    rendering, against MAX_ITERATIONS: nested loops over bounded ranges
    multiply, and so do macros that call themselves twice."""
    done = getattr(context, "wsrun_iterations", 0) + units
    if done > MAX_ITERATIONS:
        from jinja2.exceptions import SecurityError

        raise SecurityError(f"loops and calls ran more than {MAX_ITERATIONS} times")
    context.wsrun_iterations = done


def _counted(context: Any, iterable: Any) -> Iterator[Any]:
    """The items of a loop, each spent from the rendering's budget."""
    for item in iterable:
        _spend(context)
        yield item


def _finalize(value: Any) -> Any:
    """Each ``{{ value }}`` a template writes is weighed before it becomes text."""
    weigh(value)
    return value
