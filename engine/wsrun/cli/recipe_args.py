"""Each recipe is its own command line, generated from its ``inputs:``.

argparse does the parsing, so ``wsrun RECIPE --help`` and option errors look
exactly like those of any argparse tool (the original tools were argparse).
"""

from __future__ import annotations

import argparse
from typing import Any

from wsrun.core.recipe import Recipe

COMMON_DEST = ("dry_run", "json", "set", "profile", "verbose", "quiet")


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean --source?" for a misspelt option."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        if message.startswith("unrecognized arguments: "):
            from wsrun.core.expr import did_you_mean

            known = [o for a in self._actions for o in a.option_strings]
            for word in message.removeprefix("unrecognized arguments: ").split():
                hint = did_you_mean(word.split("=")[0], known) if word.startswith("-") else ""
                if hint:
                    message += hint
                    break
        super().error(message)


def build_parser(recipe: Recipe, prog: str, common: bool = True) -> argparse.ArgumentParser:
    """The recipe's parser. The usage line shows only the recipe's own inputs, so
    a packaged tool's usage reads exactly as the original tool's did; the wsrun
    options (--dry-run, --json, ...) are listed in the help below it."""
    usage = None
    if common:
        usage = (
            build_parser(recipe, prog, common=False)
            .format_usage()
            .removeprefix("usage: ")
            .rstrip("\n")
        )
    description = recipe.description.strip() or None
    parser = _Parser(
        prog=prog,
        usage=usage,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sections: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for name, spec in recipe.inputs.items():
        container: Any = parser
        if spec.get("group"):
            title = spec["group"]
            if title not in sections:
                sections[title] = parser.add_argument_group(title)
            container = sections[title]
        if spec.get("exclusive"):
            group_id = spec["exclusive"]
            if group_id not in exclusive:
                exclusive[group_id] = container.add_mutually_exclusive_group()
            container = exclusive[group_id]
            if spec.get("exclusive_required"):
                container.required = True  # one input of the group must be given
        _add_input(container, name, spec)
    if common:
        _add_common(parser)
    return parser


def _add_input(container: Any, name: str, spec: dict[str, Any]) -> None:
    kind = spec.get("type", "string")
    # hidden: accepted, but listed neither in the usage line nor in --help
    kwargs: dict[str, Any] = {"help": argparse.SUPPRESS if spec.get("hidden") else spec.get("help")}
    if spec.get("metavar"):
        kwargs["metavar"] = spec["metavar"]
    # a secret's value is checked later (wsrun.core.runner.convert_input), by a message
    # that does not echo it as argparse's does
    if kind in ("int", "float") and not spec.get("secret"):
        kwargs["type"] = int if kind == "int" else float
    if kind == "choice" and not spec.get("secret"):
        kwargs["choices"] = spec["choices"]
    if spec.get("positional"):
        kwargs.setdefault("metavar", name.upper())
        if kind == "list":
            kwargs["nargs"] = "*" if "default" in spec or not spec.get("required", True) else "+"
        elif "default" in spec:
            kwargs["nargs"] = "?"
            kwargs["default"] = spec["default"]
        container.add_argument(name, **kwargs)
        return
    flags = spec.get("flags") or ["--" + name.replace("_", "-")]
    kwargs["dest"] = name
    if kind == "bool":
        if spec.get("default") is True:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = True
        else:
            kwargs["action"] = "store_true"
        container.add_argument(*flags, **kwargs)
        return
    if kind == "list":
        if spec.get("nargs"):
            kwargs["nargs"] = spec["nargs"]
        else:
            kwargs["nargs"] = "+"
            kwargs["action"] = "extend"
    if "default" in spec:
        kwargs["default"] = spec["default"]
    if spec.get("required") and "default" not in spec:
        kwargs["required"] = True
    container.add_argument(*flags, **kwargs)


def _add_common(parser: argparse.ArgumentParser) -> None:
    taken = set(parser._option_string_actions)
    group = parser.add_argument_group("wsrun options")

    def add(flags: list[str], **kwargs: Any) -> None:
        free = [f for f in flags if f not in taken]
        if free:
            group.add_argument(*free, **kwargs)

    add(
        ["--dry-run", "-n"],
        dest="dry_run",
        action="store_true",
        help="show what would be done; change nothing",
    )
    add(["--json"], dest="json", action="store_true", help="print the result as JSON")
    add(
        ["--set"],
        dest="set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a setting (repeatable)",
    )
    add(
        ["--profile"],
        dest="profile",
        help="settings profile (default: $CAPO_PROFILE or $WSRUN_PROFILE)",
    )
    add(
        ["-v", "--verbose"],
        dest="verbose",
        action="store_true",
        help="list every effect; tracebacks on errors",
    )
    add(["-q", "--quiet"], dest="quiet", action="store_true", help="print only errors")
    for dest in COMMON_DEST:
        parser.set_defaults(**{dest: parser.get_default(dest)})


def split_namespace(
    recipe: Recipe, ns: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe inputs, wsrun options) from parsed arguments."""
    values = vars(ns)
    inputs = {name: values.get(name) for name in recipe.inputs}
    options = {k: values.get(k) for k in COMMON_DEST}
    options["set"] = options["set"] or []
    return inputs, options


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out
