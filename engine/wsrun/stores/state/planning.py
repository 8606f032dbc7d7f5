"""What the state store will hold when a step runs, as the state steps see it.

In a real run that is the store itself. In a dry run nothing is written, so
the steps replay the ``set_state`` and lifecycle ``record`` effects that
earlier planned steps left in the world view (``WorldView.planned_other``)
over what the store holds: a recipe that sets Verified and then
DeliveryInProgress plans both moves as legal, and the store is not touched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wsrun.core.fs import ContentUnknown, WorldView
from wsrun.core.step import StepError
from wsrun.stores.state.base import Entity, StateStore
from wsrun.stores.state.lifecycle import Lifecycle, LifecycleError, load_lifecycle


def entity_path(kind: str, id: str) -> str:
    """The effect path of an entity: ``<kind>/<id>`` (kinds have no slash)."""
    return f"{kind}/{id}"


def read_lifecycle(path: str, fs: WorldView) -> Lifecycle:
    """A lifecycle file as ``fs`` sees it (it may be written by an earlier step)."""
    try:
        with fs.open(path) as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise StepError("no such lifecycle file", path=path) from None
    except ContentUnknown:
        raise StepError("the lifecycle file is only written by the real run", path=path) from None
    try:
        return load_lifecycle(path, text)
    except LifecycleError as e:
        raise StepError(f"invalid lifecycle:\n{e}") from None


def planned_lifecycle(store: StateStore, fs: WorldView, kind: str) -> Lifecycle | None:
    """The lifecycle of ``kind`` once the earlier planned steps have run."""
    planned = None
    for effect in fs.planned_other:
        if (
            effect.op == "record"
            and effect.target == store.url
            and effect.extra.get("lifecycle") == kind
        ):
            planned = effect.path
    return read_lifecycle(planned, fs) if planned else store.lifecycle(kind)


def planned_entity(store: StateStore, fs: WorldView, kind: str, id: str) -> Entity | None:
    """The entity once the earlier planned steps have run (None: it does not exist)."""
    entity = store.get(kind, id)
    path = entity_path(kind, id)
    for effect in fs.planned_other:
        if effect.op != "set_state" or effect.path != path or effect.target != store.url:
            continue
        entity = _after(entity, kind, id, effect.extra)
    return entity


def _after(entity: Entity | None, kind: str, id: str, change: dict[str, Any]) -> Entity:
    attributes = {**(entity.attributes if entity else {}), **change.get("attributes", {})}
    if entity is None:
        return Entity(kind, id, change["to"], change.get("substate"), 0.0, attributes, 1)
    return dataclasses.replace(
        entity,
        state=change["to"],
        substate=change.get("substate"),
        attributes=attributes,
        version=entity.version + 1,
    )
