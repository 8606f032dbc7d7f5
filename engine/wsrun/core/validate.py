"""Checking a recipe before anything runs, reporting every problem at once.

Each problem is reported as ``file:line:col: message`` with the offending line,
like a compiler, so an author can fix them all in one pass.

One piece: every check reports into one list with positions, in one pass over the
parsed document, and the checks share what the recipe declares (inputs, ids, vars).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from wsrun.core import expr, extras
from wsrun.core.loader import Where, YamlError
from wsrun.core.recipe import Recipe, RecipeNotFound, is_recipe_ref, load_recipe, resolve
from wsrun.core.resources import schemas_dir
from wsrun.core.step import UnknownStep, load_step, params_schema, ships_with_wsrun

STEP_SECTIONS = ("steps", "on_failure", "finally")
SCOPE_NAMES = frozenset({"inputs", "settings", "vars", "steps", "run", "env", "message"})
INPUT_TYPES_PY: dict[str, Any] = {
    "path": str,
    "string": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "list": list,
}

#: Part of the key of a remembered validation: raised when checks are added,
#: so a recipe that passed the old checks is checked again.
CHECKS_REVISION = 3

#: Most characters of expressions (other than plain names) one recipe may
#: hold: compiling Jinja costs about a millisecond per tag, and the largest
#: packaged recipe holds under 1,500. Long text belongs in a template file.
MAX_EXPRESSION_TEXT = 20_000

#: Keys authors bring from Ansible and GitHub Actions, and what wsrun calls them.
STEP_HINTS = {
    "when": "use `if:` for a condition",
    "args": "a step's parameters go in `with:`",
    "vars": "a step's parameters go in `with:`",
    "params": "a step's parameters go in `with:`",
    "inputs": "a step's parameters go in `with:`",
    "env": "a step has no `env:`; a shell step takes `with: {env: {NAME: value}}`, "
    "and any value can read the environment as {{ env.NAME }}",
    "run": "to run a command use `uses: shell` with `with: {argv: [...]}`",
    "loop": "use `for_each:` (each value is `item`, its position `index`)",
    "with_items": "use `for_each:` (each value is `item`, its position `index`)",
    "register": "give the step an `id:`; its outputs are then steps.<id>.outputs",
    "ignore_errors": "use `continue_on_error: true`",
    "continue-on-error": "use `continue_on_error:`",
    "timeout-minutes": "use `timeout:` with a unit, e.g. `timeout: 5m`",
}
RECIPE_HINTS = {
    "name": "a recipe is named by `recipe:`",
    "jobs": "a recipe has `steps:` at the top level, not jobs",
    "tasks": "use `steps:`",
    "env": "a recipe has no `env:`; declare `inputs:` or `settings:`, "
    "and read the environment as {{ env.NAME }}",
}
#: ``$HOME`` or ``${VAR}`` in a path: wsrun does not expand them (it would
#: create a directory named ``$HOME``).
_SHELL_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_PATH_KEY = re.compile(
    r"^(path|paths|source|sources|to|dest|destination|dir|directory|into|root|target|workdir|cwd)$"
    r"|_(path|paths|dir|directory|root)$"
)


@dataclass(frozen=True)
class Problem:
    where: Where
    message: str
    line_text: str = ""

    def format(self) -> str:
        text = f"{self.where}: {self.message}"
        if self.line_text.strip():
            shown, caret = _window(self.line_text, self.where.col - 1)
            text += f"\n    {shown}\n    {' ' * caret}^"
        return text


def _window(line: str, col: int, width: int = 100) -> tuple[str, int]:
    """At most ``width`` characters of a line around ``col`` (a 1 MB line is
    not printed whole), control characters shown as '?'; and the caret's
    offset in what is shown."""
    start = max(0, min(col - width // 2, len(line) - width))
    shown = line[start : start + width]
    caret = col - start
    if start > 0:
        shown, caret = "..." + shown, caret + 3
    if start + width < len(line):
        shown += "..."
    shown = "".join(c if c.isprintable() or c == "\t" else "?" for c in shown)
    return shown, caret


#: Problems checking stops at: a file with thousands of mistakes is
#: answered quickly, and its first ones are what the author fixes first.
MAX_PROBLEMS = 100


class InvalidRecipe(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        text = "\n".join(p.format() for p in problems)
        if len(problems) >= MAX_PROBLEMS:
            text += f"\n(stopped after {MAX_PROBLEMS} problems)"
        super().__init__(text)
        self.problems = problems


class _TooMany(Exception):
    pass


@cache
def _recipe_validator() -> Any:
    from jsonschema import Draft202012Validator

    with open(schemas_dir() / "recipe.schema.json", encoding="utf-8") as f:
        return Draft202012Validator(json.load(f))


@cache
def _step_validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(params_schema(load_step(name)))


def load_valid(path: str) -> Recipe:
    """Load a recipe and raise InvalidRecipe listing every problem in it."""
    try:
        recipe = load_recipe(path)
    except YamlError as e:
        raise InvalidRecipe([_yaml_problem(e)]) from None
    marker = _validated_marker(recipe)
    if marker is not None and os.path.exists(marker):
        return recipe
    problems = check(recipe)
    if problems:
        raise InvalidRecipe(problems)
    if marker is not None:
        try:
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "a").close()
        except OSError:
            pass  # only a cache: the run's own writes will say what is wrong
    return recipe


def _validated_marker(recipe: Recipe) -> str | None:
    """A file whose existence says this exact recipe (and every recipe it calls)
    passed validation with this version of wsrun. Checking is then skipped,
    which saves importing jsonschema (a fifth of a second) on every run. None
    when the result cannot be keyed (a recipe it calls is missing, or a step
    type from another distribution's plugin, whose schema may change without
    wsrun's version; the packs' step types ship with wsrun and are keyed)."""
    from wsrun import __version__
    from wsrun.core.journal import default_home

    digest = hashlib.sha256(f"{__version__} checks {CHECKS_REVISION}".encode())
    seen: set[str] = set()

    def add(r: Recipe) -> bool:
        if r.path in seen:
            return True
        seen.add(r.path)
        digest.update(r.path.encode() + b"\0" + r.doc.text.encode() + b"\0")
        for section in STEP_SECTIONS:
            listed = r.step_list(section) if isinstance(r.data.get(section), list) else []
            for _, step in _flat_steps(listed, (section,)):
                if isinstance(step, dict) and "group" in step and "uses" not in step:
                    continue  # its steps follow
                uses = step.get("uses") if isinstance(step, dict) else None
                if not isinstance(uses, str):
                    return False
                if not is_recipe_ref(uses):
                    if not ships_with_wsrun(uses):
                        return False
                    if uses in extras.STEP_EXTRAS:  # a missing extra is a problem
                        digest.update(f"{uses}:{extras.missing_for_step(uses)}\0".encode())
                    continue
                try:
                    if not add(load_recipe(resolve(uses, r.dir))):
                        return False
                except (RecipeNotFound, YamlError, OSError):
                    return False
        return True

    if not add(recipe):
        return None
    return os.path.join(default_home(), "validated", digest.hexdigest())


_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}
_ANNOTATIONS = frozenset({"description", "default", "examples", "title", "deprecated"})
_BOUNDS: dict[str, Any] = {
    "minLength": lambda v, n: not isinstance(v, str) or len(v) >= n,
    "maxLength": lambda v, n: not isinstance(v, str) or len(v) <= n,
    "minItems": lambda v, n: not isinstance(v, list) or len(v) >= n,
    "maxItems": lambda v, n: not isinstance(v, list) or len(v) <= n,
    "minimum": lambda v, n: isinstance(v, bool) or not isinstance(v, (int, float)) or v >= n,
    "maximum": lambda v, n: isinstance(v, bool) or not isinstance(v, (int, float)) or v <= n,
    "exclusiveMinimum": lambda v, n: (
        isinstance(v, bool) or not isinstance(v, (int, float)) or v > n
    ),
    "exclusiveMaximum": lambda v, n: (
        isinstance(v, bool) or not isinstance(v, (int, float)) or v < n
    ),
}
_OBJECT = frozenset({"properties", "required", "additionalProperties"})
_QUICK = frozenset({"type", "enum", "items", "oneOf", "anyOf", *_BOUNDS, *_OBJECT})


def obviously_valid(schema: Any, value: Any) -> bool:
    """True when ``value`` certainly satisfies ``schema``, judged by ``type``,
    ``enum``, the bounds, ``items``, ``oneOf``/``anyOf`` and an object's
    ``properties``, ``required`` and ``additionalProperties`` (true or false)
    alone. Anything else answers False and the caller asks jsonschema, so this
    only spares the import of jsonschema (a fifth of a second) for the common
    values expressions yield (image-derivative's list of derivatives too)."""
    if not isinstance(schema, dict) or set(schema) - _ANNOTATIONS - _QUICK:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    for key, check in _BOUNDS.items():
        if key in schema and not check(value, schema[key]):
            return False
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = False
        for t in types:
            py = _JSON_TYPES.get(t)
            if (
                py is not None
                and isinstance(value, py)
                and not (t in ("integer", "number") and isinstance(value, bool))
            ):
                ok = True
        if not ok:
            return False
    if "items" in schema:
        if not isinstance(value, list) or not all(
            obviously_valid(schema["items"], v) for v in value
        ):
            return False
    if isinstance(value, dict) and not _obviously_valid_object(schema, value):
        return False
    for key in ("oneOf", "anyOf"):
        if key in schema:
            matches = sum(1 for sub in schema[key] if obviously_valid(sub, value))
            if matches == 0 or (key == "oneOf" and matches > 1):
                return False
    return True


def _obviously_valid_object(schema: dict[str, Any], value: dict[Any, Any]) -> bool:
    """The object keywords of obviously_valid: every required key present, every
    key a string that is a property whose value is obviously valid, or allowed
    by ``additionalProperties`` (absent or true)."""
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or any(k not in value for k in schema.get("required", ())):
        return False
    others = schema.get("additionalProperties", True) is True
    for key, item in value.items():
        if not isinstance(key, str):
            return False
        if key in properties:
            if not obviously_valid(properties[key], item):
                return False
        elif not others:
            return False
    return True


def _yaml_problem(e: YamlError) -> Problem:
    try:
        with open(e.where.file, encoding="utf-8", errors="replace") as f:
            line = f.read().splitlines()[e.where.line - 1]
    except (OSError, IndexError):
        line = ""
    message = e.message
    if "{{" in line and ("unhashable" in message or "mapping" in message):
        message += " (a value that starts with '{{' must be quoted)"
    return Problem(e.where, message, line)


def check(recipe: Recipe) -> list[Problem]:
    """Every problem in a parsed recipe, sorted by position."""
    checker = _Checker(recipe)
    try:
        checker.run()
    except _TooMany:
        pass
    return sorted(
        set(checker.problems),
        key=lambda p: (
            p.where.file != recipe.path,
            p.where.file,
            p.where.line,
            p.where.col,
            p.message,
        ),
    )


def _missing_extras(recipe: Recipe, seen: set[str]) -> list[Problem]:
    """A problem at each step of ``recipe``, and of the recipes it calls, whose
    step type needs an extra that is not installed: a recipe called as a step
    is otherwise checked only when the run reaches it, and the run must fail
    before it starts."""
    if recipe.path in seen:
        return []
    seen.add(recipe.path)
    problems = []
    for section in STEP_SECTIONS:
        steps = recipe.data.get(section)
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            uses = step.get("uses") if isinstance(step, dict) else None
            if not isinstance(uses, str):
                continue
            if is_recipe_ref(uses):
                try:
                    sub = load_recipe(resolve(uses, recipe.dir))
                except (RecipeNotFound, YamlError, OSError):
                    continue  # reported when that recipe is checked
                problems += _missing_extras(sub, seen)
                continue
            extra = extras.missing_for_step(uses)
            if extra is not None:
                where = recipe.doc.where((section, i, "uses"))
                problems.append(Problem(where, extras.message(uses, extra)))
    return problems


def schema_messages(
    validator: Any, instance: Any, label: str = "recipe", recipe: bool = False
) -> list[tuple[tuple[Any, ...], str, bool]]:
    """(path, message, is_key) for each schema error, worded for authors.
    A value that is an expression is checked when it has a value, at run time,
    except (``recipe``) where a recipe's structure is: a section or a step."""
    out = []
    for err in validator.iter_errors(instance):
        path = tuple(err.absolute_path)
        structure = recipe and (len(path) == 1 or (len(path) == 2 and path[0] in STEP_SECTIONS))
        if expr.is_template(err.instance) and not structure:
            continue
        if err.validator == "additionalProperties":
            properties = err.schema.get("properties", {})
            for k in [k for k in err.instance if k not in properties]:
                out.append((path + (k,), unknown_key(k, properties), True))
            continue
        if err.validator == "oneOf" and err.context:
            best = min(err.context, key=lambda e: len(list(e.absolute_path)))
            out.append((path, best.message, False))
            continue
        where = ".".join(str(p) for p in path) or label
        out.append((path, f"{where}: {err.message}", False))
    return out


def unknown_key(key: Any, properties: dict[str, Any]) -> str:
    """ "unknown key 'when': use `if:` ..." with the fix an Ansible or GitHub
    Actions author needs, or the closest known key, or the known keys."""
    hints = STEP_HINTS if "uses" in properties else RECIPE_HINTS if "recipe" in properties else {}
    if isinstance(key, str) and key in hints:
        return f"unknown key '{key}': {hints[key]}"
    close = expr.did_you_mean(str(key), properties)
    if close:
        return f"unknown key '{key}'{close}"
    return f"unknown key '{key}' (known: {', '.join(sorted(properties))})"


def _flat_steps(steps: list[Any], path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, step) of each step in ``steps`` and, after a group, of the steps
    inside it (at any depth, so a nested group is found and refused)."""
    out: list[tuple[tuple[Any, ...], Any]] = []
    for i, step in enumerate(steps):
        out.append((path + (i,), step))
        inner = step.get("steps") if isinstance(step, dict) and "group" in step else None
        if isinstance(inner, list):
            out += _flat_steps(inner, path + (i, "steps"))
    return out


class _Checker:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.doc = recipe.doc
        self.problems: list[Problem] = []
        self.expression_text = 0
        #: Recipes whose steps' extras were checked (each once: a recipe that calls
        #: another a thousand times must not walk it a thousand times).
        self.extras_seen: set[str] = {recipe.path}

    def add(self, path: tuple[Any, ...], message: str, key: bool = False) -> None:
        where = self.doc.key_where(path) if key else self.doc.where(path)
        self.problems.append(Problem(where, message, self.doc.line_text(where.line)))
        if len(self.problems) >= MAX_PROBLEMS:
            raise _TooMany

    def run(self) -> None:
        data = self.doc.data
        if not isinstance(data, dict):
            self.add((), "a recipe must be a mapping with 'recipe' and 'steps'")
            return
        for path, message, is_key in schema_messages(_recipe_validator(), data, recipe=True):
            self.add(path, message, is_key)
        self.check_inputs()
        self.check_on()
        ids: list[str] = []
        for section in STEP_SECTIONS:
            steps = data.get(section)
            if not isinstance(steps, list):
                continue
            known = list(ids) if section == "steps" else self.all_ids()
            for path, step in _flat_steps(steps, (section,)):
                if isinstance(step, dict):
                    if "group" in step:
                        self.check_group(path, step)
                    self.check_step(path, step, known, section != "steps")
                    sid = step.get("id")
                    if isinstance(sid, str):
                        if sid in known or sid in ids:
                            self.add(path + ("id",), f"step id '{sid}' is used twice")
                        known.append(sid)
                        if section == "steps":
                            ids.append(sid)
        for name, value in (
            (data.get("vars") or {}).items() if isinstance(data.get("vars"), dict) else []
        ):
            self.check_expressions(
                ("vars", name), value, self.all_ids(), in_loop=False, in_failure=False
            )
        if isinstance(data.get("outputs"), dict):
            for name, value in data["outputs"].items():
                self.check_expressions(("outputs", name), value, self.all_ids(), False, False)

    def steps(self) -> list[Any]:
        """Every step of ``steps:``, those inside atomic groups too, in order."""
        steps = self.doc.data.get("steps")
        return [s for _, s in _flat_steps(steps, ("steps",))] if isinstance(steps, list) else []

    def check_group(self, path: tuple[Any, ...], step: dict[str, Any]) -> None:
        """An atomic group has `group:` and `steps:` and none of a plain
        step's `uses`, `with`, `for_each`, `retry`, `timeout`; groups do not
        nest, nor call recipes (whose steps the group could not redirect)."""
        for key in ("uses", "with", "for_each", "retry", "timeout"):
            if key in step:
                self.add(
                    path + (key,),
                    f"a group has no `{key}:` (it runs the steps under `steps:`)",
                    key=True,
                )
        if len(path) > 2:
            self.add(
                path + ("group",),
                "groups do not nest: put these steps in the outer group",
                key=True,
            )
        spec = step.get("group")
        if isinstance(spec, dict):
            for name, value in spec.items():
                if isinstance(value, str) and expr.is_template(value):
                    self.check_expressions(
                        path + ("group", name), value, self.all_ids(), False, False
                    )
        inner = step.get("steps")
        for i, sub in enumerate(inner if isinstance(inner, list) else []):
            uses = sub.get("uses") if isinstance(sub, dict) else None
            if isinstance(uses, str) and is_recipe_ref(uses):
                self.add(
                    path + ("steps", i, "uses"),
                    "a step inside a group cannot call a recipe (its steps would not be staged)",
                )

    def all_ids(self) -> list[str]:
        return [
            s["id"] for s in self.steps() if isinstance(s, dict) and isinstance(s.get("id"), str)
        ]

    def check_on(self) -> None:
        """``on:`` (the triggers of ``wsrun worker``): a message selector is a
        valid pattern and may use inputs; a file trigger needs input ``path``."""
        on = self.doc.data.get("on")
        if not isinstance(on, dict):
            return
        inputs = self.doc.data.get("inputs")
        declared = inputs if isinstance(inputs, dict) else {}
        selector = on.get("message")
        if isinstance(selector, str) and selector:
            if expr.is_template(selector):
                self.check_expressions(("on", "message"), selector, [], False, False)
            else:
                from wsrun.core.selectors import pattern_problem

                problem = pattern_problem(selector)
                if problem:
                    self.add(("on", "message"), problem)
        if "file" in on and "path" not in declared:
            self.add(("on", "file"), "a file trigger gives the recipe input 'path': declare it")

    def check_inputs(self) -> None:
        inputs = self.doc.data.get("inputs")
        if not isinstance(inputs, dict):
            return
        flags_seen: dict[str, str] = {}
        for name, spec in inputs.items():
            if not isinstance(spec, dict):
                continue
            kind = spec.get("type", "string")
            if kind == "choice" and not spec.get("choices"):
                self.add(("inputs", name), f"input '{name}' is a choice but lists no 'choices'")
            paths = kind == "path" or (kind == "list" and spec.get("items") == "path")
            if spec.get("within") and not paths:
                self.add(
                    ("inputs", name, "within"),
                    f"input '{name}' is not a path: 'within' confines paths only",
                )
            if spec.get("from_message") and paths and not spec.get("within"):
                self.add(
                    ("inputs", name, "from_message"),
                    f"input '{name}' is a path a message may set: declare the directories it"
                    " must lie in with 'within'",
                )
            if spec.get("positional") and spec.get("flags"):
                self.add(
                    ("inputs", name, "flags"), f"input '{name}' is positional and cannot have flags"
                )
            flags = spec.get("flags")
            for flag in flags if isinstance(flags, list) else []:
                if not isinstance(flag, str):
                    continue  # the schema reports it
                if flag in flags_seen:
                    self.add(
                        ("inputs", name, "flags"),
                        f"flag {flag} is used by inputs '{flags_seen[flag]}' and '{name}'",
                    )
                flags_seen[flag] = name
            if kind == "path" and isinstance(spec.get("default"), str):
                self.check_shell_vars(("inputs", name, "default"), spec["default"])
            if (
                "default" in spec
                and spec["default"] is not None
                and not expr.is_template(spec["default"])
            ):
                py = INPUT_TYPES_PY.get(kind)
                if py and (
                    not isinstance(spec["default"], py)
                    or (kind in ("int", "float") and isinstance(spec["default"], bool))
                ):
                    self.add(
                        ("inputs", name, "default"), f"default of input '{name}' is not a {kind}"
                    )
                if (
                    kind == "choice"
                    and spec.get("choices")
                    and spec["default"] not in spec["choices"]
                ):
                    self.add(
                        ("inputs", name, "default"),
                        f"default of input '{name}' is not one of its choices",
                    )

    def check_step(
        self, path: tuple[Any, ...], step: dict[str, Any], known_ids: list[str], in_failure: bool
    ) -> None:
        uses = step.get("uses")
        in_loop = "for_each" in step
        if isinstance(uses, str):
            self.check_uses(path, uses, step.get("with"))
        for key in ("if", "for_each"):
            if isinstance(step.get(key), str):
                self.check_expressions(
                    path + (key,),
                    step[key],
                    known_ids,
                    in_loop and key == "if",
                    in_failure,
                    bare=True,
                )
        if isinstance(step.get("with"), dict):
            raw = self.unrendered(uses)
            for key, value in step["with"].items():
                if key not in raw:
                    self.check_expressions(
                        path + ("with", key), value, known_ids, in_loop, in_failure
                    )
                if isinstance(key, str) and _PATH_KEY.search(key):
                    for i, v in enumerate(value if isinstance(value, list) else [value]):
                        sub = (i,) if isinstance(value, list) else ()
                        if isinstance(v, str):
                            self.check_shell_vars(path + ("with", key) + sub, v)

    def check_shell_vars(self, path: tuple[Any, ...], value: str) -> None:
        """``$HOME/out`` would make a directory literally named ``$HOME``:
        wsrun does not expand shell variables in paths, so say what to write."""
        m = _SHELL_VAR.search(value.replace("${{", ""))
        if m:
            self.add(
                path,
                f"'{m.group()}' is not expanded in a path (it would be a directory named "
                f"'{m.group()}'): use {{{{ env.{m.group(1)} }}}}",
            )

    def unrendered(self, uses: Any) -> tuple[str, ...]:
        """Parameters a step type renders itself (the recipe leaves them alone)."""
        if not isinstance(uses, str) or is_recipe_ref(uses):
            return ()
        try:
            return tuple(getattr(load_step(uses), "UNRENDERED", ()))
        except UnknownStep:
            return ()

    def check_uses(self, path: tuple[Any, ...], uses: str, params: Any) -> None:
        if is_recipe_ref(uses):
            try:
                sub = load_recipe(resolve(uses, self.recipe.dir))
            except RecipeNotFound:
                self.add(
                    path + ("uses",),
                    f"no recipe '{uses}' (looked beside this recipe and in the packaged recipes)",
                )
                return
            except YamlError as e:
                self.add(path + ("uses",), f"recipe '{uses}' does not parse: {e}")
                return
            if isinstance(params, dict):
                for key in params:
                    if key not in sub.inputs:
                        hint = expr.did_you_mean(str(key), sub.inputs) or (
                            f" (inputs: {', '.join(sub.inputs) or 'none'})"
                        )
                        self.add(
                            path + ("with", key),
                            f"recipe '{uses}' has no input '{key}'{hint}",
                            key=True,
                        )
                for key, spec in sub.inputs.items():
                    if (
                        isinstance(spec, dict)
                        and spec.get("required")
                        and "default" not in spec
                        and key not in params
                    ):
                        self.add(path + ("with",), f"recipe '{uses}' needs input '{key}'")
            self.problems.extend(_missing_extras(sub, self.extras_seen))
            return
        try:
            validator = _step_validator(uses)
        except UnknownStep as e:
            from wsrun.core.step import step_names

            if str(e) != uses:
                detail = " " + str(e)[len(uses) :].strip()
            else:
                detail = expr.did_you_mean(uses, step_names()) or " (see 'wsrun steps')"
            self.add(path + ("uses",), f"unknown step type '{uses}'{detail}")
            return
        extra = extras.missing_for_step(uses)
        if extra is not None:  # one line: the fix is an install, not an edit
            self.problems.append(
                Problem(self.doc.where(path + ("uses",)), extras.message(uses, extra))
            )
        with_ = params if params is not None else {}
        for sub_path, message, is_key in schema_messages(validator, with_, "with"):
            self.add(path + ("with",) + sub_path, f"{uses}: {message}", is_key)

    def check_expressions(
        self,
        path: tuple[Any, ...],
        value: Any,
        known_ids: list[str],
        in_loop: bool,
        in_failure: bool,
        bare: bool = False,
    ) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                self.check_expressions(path + (k,), v, known_ids, in_loop, in_failure)
            return
        if isinstance(value, list):
            for i, v in enumerate(value):
                self.check_expressions(path + (i,), v, known_ids, in_loop, in_failure)
            return
        if not isinstance(value, str) or not (bare or expr.is_template(value)):
            return
        if "${{" in value:
            self.add(
                path, "`${{ ... }}` is GitHub Actions syntax: wsrun expressions are `{{ ... }}`"
            )
            return
        if expr.needs_jinja(value, bare):
            if self.expression_text > MAX_EXPRESSION_TEXT:
                return  # reported once, below
            self.expression_text += len(value)
            if self.expression_text > MAX_EXPRESSION_TEXT:
                self.add(
                    path,
                    f"expressions add up to more than {MAX_EXPRESSION_TEXT} characters here: "
                    "put long text in a template file (the template step's src:)",
                )
                return
        try:
            chains = list(expr.references(value, bare=bare))
            expr.compile_check(value, bare=bare)
            if not chains and "{%" not in value:
                self.check_constant(value, bare)
        except expr.ExpressionError as e:
            self.add(path, e.message)
            return
        allowed = set(SCOPE_NAMES) | expr.JINJA_GLOBALS
        if in_loop:
            allowed |= {"item", "index"}
        if in_failure:
            allowed.add("error")
        for chain in chains:
            self.check_reference(path, chain, allowed, known_ids)

    def check_constant(self, value: str, bare: bool) -> None:
        """A constant expression the sandbox refuses (``"x" * 10**10``, an
        unsafe attribute) is an error now; other failures, such as a division
        by zero, stay the step's at run time."""
        try:
            expr.evaluate(value, {}, bare=bare)
        except expr.UnsafeExpression:
            raise
        except expr.ExpressionError:
            pass

    def check_reference(
        self, path: tuple[Any, ...], chain: tuple[str, ...], allowed: set[str], known_ids: list[str]
    ) -> None:
        root = chain[0]
        if root not in allowed:
            hint = (
                " (item and index exist only in a for_each step)"
                if root in ("item", "index")
                else ""
            )
            self.add(path, f"unknown name '{root}'{hint or expr.did_you_mean(root, allowed)}")
            return
        if len(chain) < 2:
            return
        data = self.doc.data
        name = chain[1]
        declared = {
            "inputs": data.get("inputs"),
            "vars": data.get("vars"),
            "settings": data.get("settings"),
        }.get(root)
        if root in ("inputs", "vars", "settings"):
            if not isinstance(declared, dict) or name not in declared:
                names = (
                    ", ".join(declared)
                    if isinstance(declared, dict) and declared
                    else "none declared"
                )
                close = expr.did_you_mean(name, declared) if isinstance(declared, dict) else ""
                self.add(
                    path,
                    f"unknown {root[:-1] if root != 'settings' else 'setting'} '{name}'"
                    + (close or f" ({root}: {names})"),
                )
        elif root == "steps":
            if name not in known_ids:
                later = name in self.all_ids()
                named = any(isinstance(s, dict) and s.get("name") == name for s in self.steps())
                if later:
                    reason = "runs later; only earlier steps' outputs are known"
                elif named:
                    reason = (
                        f"does not exist: '{name}' is a step's `name:`, a label; "
                        f"steps.X refers to `id:`, so give that step `id: {name}`"
                    )
                else:
                    reason = "does not exist" + expr.did_you_mean(name, known_ids)
                self.add(path, f"step '{name}' {reason}")
            elif len(chain) >= 4 and chain[2] == "outputs":
                self.check_output_name(path, name, chain[3])
            elif len(chain) >= 3 and chain[2] not in ("outputs", "status", "effects", "error"):
                self.add(
                    path, f"steps.{name} has outputs, status, effects and error, not '{chain[2]}'"
                )

    def check_output_name(self, path: tuple[Any, ...], step_id: str, output: str) -> None:
        for step in self.steps():
            if isinstance(step, dict) and step.get("id") == step_id:
                uses = step.get("uses")
                if not isinstance(uses, str) or is_recipe_ref(uses):
                    return
                if "for_each" in step:
                    if output != "results":
                        self.add(
                            path,
                            f"step '{step_id}' runs for_each: its outputs are in steps.{step_id}.outputs.results",
                        )
                    return
                try:
                    outputs = getattr(load_step(uses), "OUTPUTS", None)
                except UnknownStep:
                    return
                if outputs and "<any>" not in outputs and output not in outputs:
                    self.add(
                        path,
                        f"step type '{uses}' has no output '{output}' (outputs: {', '.join(outputs)})",
                    )
                return
