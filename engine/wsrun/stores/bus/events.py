"""State changes as bus messages, so recipes can react to them (``on: state``).

Every committed state change waits in the store's outbox until it is
published here. Every worker with a state trigger relays several times a
second (others may relay too, e.g. right after a transition), so a crash
between the commit and the publish loses nothing: the change is published
late, never dropped (at least once: a crash after publishing but before
marking may publish it twice).

A change no queue subscribes to is dropped, not kept unrouted (it would pile
up, several per OUS, forever). A queue declared later for a state trigger
catches up instead from the store itself (``catch_up``): list, then watch.
Nothing anybody subscribed to is lost.
"""

from __future__ import annotations

from typing import Any

from wsrun.stores.bus.base import Bus

#: Seconds a relay holds the changes it claimed before another may take them.
RELAY_LEASE = 30.0


def change_selector(kind: str, state: str) -> str:
    """``state.<kind>.<state>``: what a change to ``state`` is published as."""
    return f"state.{kind}.{state}"


def change_body(change: Any) -> dict[str, Any]:
    """The message body of one state change (a ``wsrun.stores.state.Change``)."""
    return {
        "kind": change.kind,
        "id": change.id,
        "state": change.state,
        "substate": change.substate,
        "from_state": change.from_state,
        "from_substate": change.from_substate,
        "attributes": change.attributes,
        "seq": change.seq,
        "at": change.at,
    }


def relay_state_changes(
    store: Any, bus: Bus, consumer: str = "relay", limit: int = 100, lease: float = RELAY_LEASE
) -> int:
    """Publish every pending change of ``store`` on ``bus`` as
    ``state.<kind>.<state>`` and mark it published; how many were published.
    Relays running at once never publish the same change (they claim them)."""
    published = 0
    while True:
        changes = store.claim_pending_changes(consumer, limit, lease)
        if not changes:
            return published
        for change in changes:
            bus.publish(
                change_selector(change.kind, change.state),
                change_body(change),
                keep_unrouted=False,
            )
        store.mark_published([c.seq for c in changes])
        published += len(changes)
        if len(changes) < limit:
            return published


def catch_up(
    store: Any,
    bus: Bus,
    queue: str,
    kind: str,
    to: str | None = None,
    from_state: str | None = None,
    substate: str | None = None,
) -> int:
    """Put in ``queue`` (a state trigger's new queue, already declared) the
    change that brought each entity where the trigger points, for entities
    still there; how many. Changes published before the queue existed were
    dropped, so a subscriber that starts late (a data tracker started after
    the OUS was ingested) would otherwise never see them; changes after the
    declaration reach the queue through the relay. An entity that has moved
    on is not replayed: that work is no longer due.

    A change committed just before the declaration may arrive twice (here
    and from the relay): at least once, as every delivery; handlers are
    idempotent."""
    total = store.count(kind=kind, state=to, substate=substate)
    sent = 0
    for entity in store.list(kind=kind, state=to, substate=substate, limit=max(total, 1)):
        change = _arrival(store.history(kind, entity.id), from_state, substate)
        if change is not None:
            bus.send_to_queue(queue, change_selector(kind, change.state), change_body(change))
            sent += 1
    return sent


def _arrival(history: list[Any], from_state: str | None, substate: str | None) -> Any:
    """The latest change passing the trigger's filters since the entity last
    entered its current state (None when none did)."""
    if not history:
        return None
    current = history[-1].state
    for change in reversed(history):
        if change.state != current:
            return None
        if (from_state is None or change.from_state == from_state) and (
            substate is None or change.substate == substate
        ):
            return change
    return None
