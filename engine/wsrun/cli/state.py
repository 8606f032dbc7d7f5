"""``wsrun state``: list, inspect and change entities, and manage lifecycles."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import typer

from wsrun.stores.state.base import Change, Entity, StateError, StateStore
from wsrun.stores.state.outcome import outcome

state_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="List, inspect and change entities in the state store; register lifecycles.",
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="State store URL (default: $WSRUN_STATE_URL, the wsrun.state.url setting, "
        "sqlite:///$WSRUN_HOME/state.db)",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _fail(message: str, code: int) -> typer.Exit:
    print(f"wsrun state: {message}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def _store(url: str | None) -> Iterator[StateStore]:
    """The store; a refused operation is one line on stderr and exit 1."""
    from wsrun.stores.state import open_state_store

    try:
        store = open_state_store(url)
    except StateError as e:
        raise _fail(str(e), 2) from None
    try:
        yield store
    except StateError as e:
        raise _fail(str(e), 1) from None
    finally:
        store.close()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _entity_line(e: Entity) -> str:
    sub = f" ({e.substate})" if e.substate else ""
    return f"{e.kind:<8} {e.id:<28} {e.state}{sub:<22}  {_when(e.updated)}"


def _change_line(c: Change) -> str:
    move = f"{c.from_state or '(new)'} -> {c.state}"
    if c.substate != c.from_substate:
        move += f"  substate {c.from_substate or '-'} -> {c.substate or '-'}"
    attrs = f"  {json.dumps(c.attributes)}" if c.attributes else ""
    actor = f"  by {c.actor}" if c.actor else ""
    return f"#{c.seq:<6} {_when(c.at)}  {move}{attrs}{actor}"


@state_app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Option(help="Only this kind")] = None,
    state: Annotated[str | None, typer.Option(help="Only entities in this state")] = None,
    substate: Annotated[str | None, typer.Option(help="Only entities in this substate")] = None,
    limit: Annotated[int, typer.Option(help="How many to list")] = 100,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """List entities, most recently changed first."""
    with _store(store) as s:
        entities = s.list(kind=kind, state=state, substate=substate, limit=limit)
        total = s.count(kind=kind, state=state, substate=substate)
    if as_json:
        print(json.dumps([e.to_json() for e in entities], indent=2))
        return
    for e in entities:
        print(_entity_line(e))
    if total > len(entities):
        print(f"... {total - len(entities)} more (--limit)")


@state_app.command("show")
def show(
    kind: Annotated[str, typer.Argument(help="The entity's kind")],
    id: Annotated[str, typer.Argument(help="The entity's id")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """One entity: state, substate, attributes and its history."""
    with _store(store) as s:
        entity = s.get(kind, id)
        if entity is None:
            raise _fail(f"no {kind} '{id}'", 1)
        history = s.history(kind, id)
        lifecycle = s.lifecycle(kind)
    if as_json:
        print(json.dumps({**entity.to_json(), "history": [c.to_json() for c in history]}, indent=2))
        return
    print(f"{entity.kind} {entity.id}")
    print(f"  state     {entity.state}")
    summary, reasons = outcome(entity.state, entity.attributes)
    if reasons:
        print(f"  outcome   {summary}")
        for why in reasons:
            print(f"    - {why}")
    print(f"  substate  {entity.substate or '-'}")
    print(f"  updated   {_when(entity.updated)} (version {entity.version})")
    if lifecycle is not None:
        allowed = lifecycle.allowed(entity.state)
        print(f"  next      {', '.join(allowed) if allowed else '(final state)'}")
    for key, value in entity.attributes.items():
        print(f"  {key} = {json.dumps(value)}")
    print("history:")
    for c in history:
        print(f"  {_change_line(c)}")


def _parse_attr(text: str) -> tuple[str, Any]:
    """``k=v``: ``v`` is read as JSON when it is JSON (3, true, [1]), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise _fail(f"--attr expects KEY=VALUE, got {text!r}", 2)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


@state_app.command("set")
def set_(
    kind: Annotated[str, typer.Argument(help="The entity's kind")],
    id: Annotated[str, typer.Argument(help="The entity's id")],
    state: Annotated[str, typer.Argument(help="The state to move to")],
    substate: Annotated[str | None, typer.Option(help="The substate to set ('' clears it)")] = None,
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="KEY=VALUE (VALUE as JSON if it is JSON)")
    ] = None,
    create: Annotated[bool, typer.Option("--create", help="Create the entity if absent")] = False,
    expect: Annotated[
        str | None, typer.Option(help="Refuse unless the entity is in this state")
    ] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move an entity to STATE (checked against its kind's lifecycle)."""
    from wsrun.stores.state.base import UNSET

    attributes = dict(_parse_attr(a) for a in attr or [])
    with _store(store) as s:
        change = s.transition(
            kind,
            id,
            state=state,
            substate=UNSET if substate is None else (substate or None),
            attributes=attributes,
            expect_state=expect,
            create=create,
            actor="wsrun state set",
        )
    if as_json:
        print(json.dumps(change.to_json(), indent=2))
    else:
        print(f"{kind} {id}: {_change_line(change)}")


@state_app.command("history")
def history(
    kind: Annotated[str, typer.Argument(help="The entity's kind")],
    id: Annotated[str, typer.Argument(help="The entity's id")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every change made to an entity, oldest first."""
    with _store(store) as s:
        changes = s.history(kind, id)
    if not changes:
        raise _fail(f"no {kind} '{id}'", 1)
    if as_json:
        print(json.dumps([c.to_json() for c in changes], indent=2))
        return
    for c in changes:
        print(_change_line(c))


@state_app.command("lifecycle")
def lifecycle(
    file: Annotated[str | None, typer.Argument(help="A lifecycle YAML file to register")] = None,
    kind: Annotated[str | None, typer.Option(help="Show the registered lifecycle of KIND")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a lifecycle from FILE, or show a kind's with --kind."""
    from wsrun.stores.state.lifecycle import LifecycleError, load_lifecycle

    if (file is None) == (kind is None):
        raise _fail("give a lifecycle FILE to register, or --kind KIND to show one", 2)
    if file is not None:
        try:
            loaded = load_lifecycle(file)
        except LifecycleError as e:
            print(str(e), file=sys.stderr)
            raise typer.Exit(2) from None
        with _store(store) as s:
            s.register_lifecycle(loaded)
        print(
            f"registered the lifecycle of {loaded.kind}: {len(loaded.states)} states, "
            f"{len(loaded.transitions)} transitions"
        )
        return
    assert kind is not None
    with _store(store) as s:
        found = s.lifecycle(kind)
    if found is None:
        raise _fail(f"no lifecycle registered for '{kind}' (any state is allowed)", 1)
    if as_json:
        print(json.dumps(found.to_json(), indent=2))
        return
    print(f"lifecycle of {found.kind} (new entities start in {found.initial})")
    for state in found.states:
        targets = found.allowed(state)
        print(f"  {state:<22} -> {', '.join(targets) if targets else '(final)'}")
    if found.substates:
        print("substates:")
        for sub in found.substates:
            where = found.substate_states.get(sub)
            print(f"  {sub:<22} {'in ' + ', '.join(where) if where else 'in any state'}")
