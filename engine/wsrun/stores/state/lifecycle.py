"""Lifecycles: the states a kind of entity goes through and the allowed moves.

A lifecycle is declared in YAML (``engine/wsrun/packs/alma/recipes/ous-lifecycle.yaml`` is the
example; ``schemas/lifecycle.schema.json`` its schema) and registered in the
store, so every client enforces the same rules. Problems in the file are
reported as ``file:line:col`` like a recipe's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from wsrun.core.loader import Document, YamlError, load
from wsrun.core.recipe import is_lifecycle_document
from wsrun.stores.state.errors import IllegalTransition, StateError

ANY = "*"


class LifecycleError(StateError):
    """A lifecycle file is invalid; ``problems`` are ``file:line:col: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Lifecycle:
    """A kind's states, substates and transitions.

    ``transitions`` is a list of ``{"from": [states] | "*", "to": state}``
    (plus an optional ``description``). ``substate_states`` maps a substate to
    the states it may be set in; a substate not in it is allowed in any state.
    """

    kind: str
    states: list[str]
    initial: str
    substates: list[str] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    substate_states: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""

    def allowed(self, from_state: str) -> list[str]:
        """The states ``from_state`` may move to, in declaration order."""
        out: list[str] = []
        for t in self.transitions:
            if (t["from"] == ANY or from_state in t["from"]) and t["to"] not in out:
                out.append(t["to"])
        return out

    def check_state(self, state: str) -> None:
        if state not in self.states:
            raise IllegalTransition(
                f"{self.kind} has no state '{state}' (states: {', '.join(self.states)})"
            )

    def check(self, from_state: str, to_state: str, what: str = "") -> None:
        """Raise IllegalTransition unless ``from_state -> to_state`` is declared."""
        self.check_state(to_state)
        if to_state == from_state or to_state in self.allowed(from_state):
            return
        targets = self.allowed(from_state)
        if targets:
            allowed = ", ".join(targets)
        elif from_state in self.states:
            allowed = "none: it is a final state"
        else:
            allowed = f"none: {from_state} is not a state of {self.kind}"
        raise IllegalTransition(
            f"{what or self.kind}: {from_state} -> {to_state} is not allowed "
            f"(from {from_state}: {allowed})"
        )

    def substate_allowed(self, substate: str, state: str) -> bool:
        states = self.substate_states.get(substate)
        return substate in self.substates and (states is None or state in states)

    def check_substate(self, substate: str, state: str, what: str = "") -> None:
        """Raise IllegalTransition unless ``substate`` is declared and allowed in ``state``."""
        if substate not in self.substates:
            listed = ", ".join(self.substates) or "none declared"
            raise IllegalTransition(
                f"{what or self.kind}: {self.kind} has no substate '{substate}' (substates: {listed})"
            )
        if not self.substate_allowed(substate, state):
            raise IllegalTransition(
                f"{what or self.kind}: substate {substate} is not allowed in {state} "
                f"(only in {', '.join(self.substate_states[substate])})"
            )

    def to_json(self) -> dict[str, Any]:
        """The lifecycle as the store keeps it."""
        return {
            "kind": self.kind,
            "description": self.description,
            "states": self.states,
            "initial": self.initial,
            "substates": [
                {"name": s, "in": self.substate_states[s]} if s in self.substate_states else s
                for s in self.substates
            ],
            "transitions": self.transitions,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lifecycle:
        """Build from ``to_json`` output or a parsed (already valid) YAML file."""
        substates: list[str] = []
        substate_states: dict[str, list[str]] = {}
        for item in data.get("substates") or []:
            if isinstance(item, str):
                substates.append(item)
            else:
                substates.append(item["name"])
                if item.get("in") is not None:
                    substate_states[item["name"]] = _names(item["in"])
        transitions = []
        for t in data.get("transitions") or []:
            sources: Any = ANY if t["from"] == ANY else _names(t["from"])
            for to in _names(t["to"]):
                entry: dict[str, Any] = {"from": sources, "to": to}
                if t.get("description"):
                    entry["description"] = t["description"]
                transitions.append(entry)
        return cls(
            kind=data["kind"],
            states=list(data["states"]),
            initial=data.get("initial") or data["states"][0],
            substates=substates,
            transitions=transitions,
            substate_states=substate_states,
            description=data.get("description") or "",
        )


def _names(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def is_lifecycle_file(path: str) -> bool:
    """Whether ``path`` holds a lifecycle rather than a recipe, so ``wsrun
    validate`` checks it as one; a file that cannot be read or parsed is not."""
    try:
        data = load(path).data
    except (OSError, YamlError):
        return False
    return is_lifecycle_document(data)


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    from wsrun.core.resources import schemas_dir

    with open(schemas_dir() / "lifecycle.schema.json", encoding="utf-8") as f:
        return Draft202012Validator(json.load(f))


def load_lifecycle(path: str, text: str | None = None) -> Lifecycle:
    """Read and check a lifecycle file; LifecycleError lists every problem."""
    from wsrun.core.validate import schema_messages

    try:
        doc = load(path, text)
    except YamlError as e:
        raise LifecycleError([str(e)]) from None
    except OSError as e:
        raise LifecycleError([f"{path}: {e.strerror}"]) from None
    if not isinstance(doc.data, dict):
        raise LifecycleError([f"{doc.where(())}: a lifecycle is a mapping with kind and states"])
    problems = [
        (doc.key_where(p) if is_key else doc.where(p), message)
        for p, message, is_key in schema_messages(_validator(), doc.data, "lifecycle")
    ]
    if not problems:
        problems = _semantic_problems(doc)
    if problems:
        problems.sort(key=lambda p: (p[0].line, p[0].col))
        raise LifecycleError([f"{where}: {message}" for where, message in problems])
    return Lifecycle.from_json(doc.data)


def _semantic_problems(doc: Document) -> list[tuple[Any, str]]:
    """What the schema cannot say: every name used is a declared state, once."""
    data = doc.data
    states = data["states"]
    problems = []
    for i, s in enumerate(states):
        if s in states[:i]:
            problems.append((doc.where(("states", i)), f"state '{s}' is listed twice"))
    known = set(states)

    def need(path: tuple[Any, ...], name: str) -> None:
        if name not in known:
            problems.append(
                (doc.where(path), f"unknown state '{name}' (states: {', '.join(states)})")
            )

    if "initial" in data:
        need(("initial",), data["initial"])
    names: list[str] = []
    for i, item in enumerate(data.get("substates") or []):
        name = item if isinstance(item, str) else item["name"]
        if name in names:
            problems.append((doc.where(("substates", i)), f"substate '{name}' is listed twice"))
        names.append(name)
        if isinstance(item, dict):
            where_in = ("substates", i, "in")
            for j, s in enumerate(_names(item.get("in") or [])):
                need(where_in + (j,) if isinstance(item["in"], list) else where_in, s)
    for i, t in enumerate(data.get("transitions") or []):
        for key in ("from", "to"):
            value = t[key]
            if key == "from" and value == ANY:
                continue
            if isinstance(value, str):
                need(("transitions", i, key), value)
            else:
                for j, s in enumerate(value):
                    need(("transitions", i, key, j), s)
    return problems
