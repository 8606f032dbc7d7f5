"""Shell completion: ``wsrun completion bash|zsh`` prints a script that asks
``wsrun __complete INDEX WORD...`` for the candidates of the word at INDEX.

Candidates: commands, packaged recipe names and recipe files for the first
word; a command's subcommands and options; a recipe's own options (from its
``inputs:``) and the options every run takes. Where nothing fits, the shell
completes file names.
"""

from __future__ import annotations

import os
import re
from typing import Any

BASH = """\
# wsrun completion for bash: eval "$(wsrun completion bash)" in ~/.bashrc
_wsrun_complete() {
    local IFS=$'\\n'
    COMPREPLY=($(wsrun __complete "$COMP_CWORD" "${COMP_WORDS[@]}" 2>/dev/null))
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == */ ]]; then
        compopt -o nospace 2>/dev/null
    fi
}
complete -o default -F _wsrun_complete wsrun
"""

ZSH = """\
#compdef wsrun
# wsrun completion for zsh: eval "$(wsrun completion zsh)" in ~/.zshrc (after compinit)
_wsrun() {
    local -a candidates
    candidates=("${(@f)$(wsrun __complete $((CURRENT - 1)) "${words[@]}" 2>/dev/null)}")
    if [[ -n "${candidates[1]}" ]]; then
        compadd -Q -S '' -- "${candidates[@]}"
    else
        _files
    fi
}
compdef _wsrun wsrun
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH}

#: Options every run of a recipe takes (see cliargs._add_common).
RUN_OPTIONS = ("--dry-run", "--json", "--set", "--profile", "-v", "--verbose", "-q", "--quiet")
#: Commands whose arguments are recipes.
RECIPE_COMMANDS = ("validate", "plan", "graph", "worker")


def candidates(index: int, words: list[str], commands: tuple[str, ...]) -> list[str]:
    """The completions of ``words[index]`` (``words[0]`` is ``wsrun``); ``commands``
    are wsrun's commands besides running a recipe (``wsrun.cli.main.COMMANDS``)."""
    current = words[index] if index < len(words) else ""
    before = words[1:index]
    if not before:
        found = [*commands, "plan", "completion", *recipe_names(), *recipe_paths(current)]
        return _matching(found, current)
    head = before[0]
    if head == "completion":
        return _matching(list(SCRIPTS), current) if len(before) == 1 else []
    if head == "plan":
        if len(before) == 1:
            return _matching([*recipe_names(), *recipe_paths(current)], current)
        return _matching(recipe_options(before[1]), current) if current.startswith("-") else []
    if head in commands:
        return _command_candidates(before, current)
    return _matching(recipe_options(head), current) if current.startswith("-") else []


def _command_candidates(before: list[str], current: str) -> list[str]:
    import typer.main

    from wsrun.cli.commands import app

    command: Any = typer.main.get_command(app)
    consumed = 0
    for word in before:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command, consumed = sub, consumed + 1
    subcommands = getattr(command, "commands", None)
    if subcommands and consumed == len(before) and not current.startswith("-"):
        return _matching(sorted(subcommands), current)
    options = [o for p in command.params for o in getattr(p, "opts", ()) if o.startswith("-")]
    options += [o for o in ("-q", "-v", "--help") if o not in options]
    if current.startswith("-"):
        return _matching(options, current)
    if before[0] in RECIPE_COMMANDS:
        return _matching([*recipe_names(), *recipe_paths(current)], current)
    return []


def recipe_names() -> list[str]:
    """The packaged recipes' names (``nrao/deliver``), without reading YAML."""
    from wsrun.core.resources import packaged_files

    return [
        name
        for name, path in packaged_files()
        if re.search(r"^recipe:", path.read_text(encoding="utf-8"), re.M)
    ]


def recipe_paths(prefix: str) -> list[str]:
    """Directories and YAML files that start with ``prefix``."""
    folder, _, start = prefix.rpartition("/")
    base = os.path.expanduser(folder + "/" if folder else ".")
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(start) or (entry.name.startswith(".") and not start):
            continue
        shown = f"{folder}/{entry.name}" if folder else entry.name
        if entry.is_dir():
            out.append(shown + "/")
        elif entry.name.endswith((".yaml", ".yml")):
            out.append(shown)
    return out


def recipe_options(ref: str) -> list[str]:
    """A recipe's own options and the run options; none when it cannot be read."""
    import argparse

    from wsrun.cli.recipe_args import build_parser
    from wsrun.core.recipe import load_recipe, resolve

    try:
        parser = build_parser(load_recipe(resolve(ref)), "wsrun")
    except Exception:  # a recipe that does not load completes like a file
        return []
    options = []
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            options += [o for o in action.option_strings if o not in options]
    return options + [o for o in RUN_OPTIONS if o not in options]


def _matching(words: list[str], current: str) -> list[str]:
    return [w for w in words if w.startswith(current)]


def main(args: list[str], commands: tuple[str, ...]) -> int:
    """``wsrun __complete INDEX WORD...``: one candidate a line."""
    try:
        index = int(args[0])
    except (IndexError, ValueError):
        return 2
    for word in candidates(index, args[1:], commands):
        print(word)
    return 0
