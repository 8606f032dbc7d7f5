"""The state store's model: entities, their changes, the rules a change obeys,
and the abstract store every backend implements.

Nothing here knows about SQL: a backend (``sqlite.py`` today, PostgreSQL
later) stores rows and holds the lock; ``resolve_change`` decides whether a
change is allowed, so every backend and the dry run enforce the same rules.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from wsrun.stores.state.errors import IllegalTransition, StateConflict, StateError, UnknownEntity

if TYPE_CHECKING:
    from wsrun.stores.state.lifecycle import Lifecycle

#: What a kind may be called: it starts an effect path ``<kind>/<id>``, so no slash.
KIND_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class _Unset:
    """The type of ``UNSET``: 'leave the substate as the lifecycle allows'."""

    def __repr__(self) -> str:
        return "UNSET"


#: ``transition(substate=UNSET)`` keeps the current substate when the new
#: state allows it (and clears it otherwise); ``substate=None`` clears it.
UNSET: Any = _Unset()


@dataclass
class Entity:
    """One tracked thing (an OUS, a request): where it is in its lifecycle."""

    kind: str
    id: str
    state: str
    substate: str | None
    updated: float
    attributes: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Change:
    """One history row: a change made to an entity, in commit order (``seq``).

    ``attributes`` holds only the attributes this change set. Changes are also
    the outbox: each stays pending until a relay marks it published on the bus.
    """

    seq: int
    kind: str
    id: str
    from_state: str | None
    state: str
    from_substate: str | None
    substate: str | None
    attributes: dict[str, Any]
    at: float
    actor: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_names(kind: str, id: str) -> None:
    """Refuse a kind or id that cannot be stored or named in an effect path."""
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
        raise StateError(f"bad kind {kind!r}: a letter, then letters, digits, '_', '.' or '-'")
    if not isinstance(id, str) or not id:
        raise StateError(f"bad {kind} id {id!r}: a non-empty string")


def resolve_change(
    lifecycle: Lifecycle | None,
    current: Entity | None,
    kind: str,
    id: str,
    *,
    state: str | None = None,
    substate: Any = UNSET,
    expect_state: str | Sequence[str] | None = None,
    expect_version: int | None = None,
    create: bool = False,
) -> tuple[str, str | None]:
    """The (state, substate) a change leads to, or the StateError refusing it.

    The rules, shared by every backend and by the dry run:
    - an unknown entity is refused unless ``create``; a new entity starts in
      the lifecycle's ``initial`` state;
    - ``expect_state`` (a state or a list) must hold the current state, and
      ``expect_version`` its version (0: the entity must not exist);
    - a new state must be a lifecycle transition from the current one
      (staying in the same state is not a transition and always allowed);
    - a substate must be one the lifecycle declares, allowed in the new state;
      ``UNSET`` keeps the current substate when the new state allows it.
    Kinds without a lifecycle accept any state and substate.
    """
    check_names(kind, id)
    expected = [expect_state] if isinstance(expect_state, str) else list(expect_state or [])
    if current is None:
        if expect_version not in (None, 0):
            raise StateConflict(f"{kind} {id} does not exist (expected version {expect_version})")
        if expected:
            raise StateConflict(f"{kind} {id} does not exist (expected {' or '.join(expected)})")
        if not create:
            raise UnknownEntity(f"no {kind} '{id}' (pass create to make a new one)")
        if state is None:
            raise StateError(f"a new {kind} needs a state")
        if lifecycle is not None:
            lifecycle.check_state(state)
            if state != lifecycle.initial:
                raise IllegalTransition(
                    f"a new {kind} starts in {lifecycle.initial}, not {state} ({kind} {id})"
                )
        new_state = state
        old_substate = None
    else:
        if expect_version is not None and current.version != expect_version:
            raise StateConflict(
                f"{kind} {id} changed (version {current.version}, expected {expect_version})"
            )
        if expected and current.state not in expected:
            raise StateConflict(f"{kind} {id} is {current.state}, not {' or '.join(expected)}")
        new_state = state if state is not None else current.state
        if lifecycle is not None and new_state != current.state:
            lifecycle.check(current.state, new_state, f"{kind} {id}")
        old_substate = current.substate
    if substate is UNSET:
        keep = old_substate is not None and (
            lifecycle is None or lifecycle.substate_allowed(old_substate, new_state)
        )
        return new_state, old_substate if keep else None
    if substate is not None and lifecycle is not None:
        lifecycle.check_substate(substate, new_state, f"{kind} {id}")
    return new_state, substate


class StateStore(ABC):
    """Entities with lifecycles, their history, and the outbox of changes.

    Open one with ``wsrun.stores.state.open_state_store(url)``. Every method is
    safe to call from several processes at once; ``transition`` is one
    transaction that holds the entity's row lock while it checks and writes.
    """

    url: str = ""

    @abstractmethod
    def register_lifecycle(self, lifecycle: Lifecycle) -> None:
        """Store a kind's lifecycle (replacing an earlier one), so every client
        of the store enforces the same rules."""

    @abstractmethod
    def lifecycle(self, kind: str) -> Lifecycle | None:
        """The registered lifecycle of ``kind``, or None (any state allowed)."""

    @abstractmethod
    def get(self, kind: str, id: str) -> Entity | None:
        """One entity, or None."""

    @abstractmethod
    def list(
        self,
        kind: str | None = None,
        state: str | None = None,
        substate: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Entity]:
        """Entities matching the filters, most recently updated first."""

    @abstractmethod
    def count(
        self, kind: str | None = None, state: str | None = None, substate: str | None = None
    ) -> int:
        """How many entities match the filters."""

    @abstractmethod
    def transition(
        self,
        kind: str,
        id: str,
        *,
        state: str | None = None,
        substate: Any = UNSET,
        attributes: Mapping[str, Any] | None = None,
        expect_state: str | Sequence[str] | None = None,
        expect_version: int | None = None,
        create: bool = False,
        actor: str = "",
    ) -> Change:
        """Change an entity in one transaction (see ``resolve_change`` for the
        rules); ``attributes`` are merged into the entity's. Appends the change
        to the history and the outbox and returns it. Refusals raise
        ``UnknownEntity``, ``IllegalTransition`` or ``StateConflict`` and change
        nothing."""

    @abstractmethod
    def history(self, kind: str, id: str) -> list[Change]:
        """Every change made to an entity, oldest first (empty if unknown)."""

    @abstractmethod
    def claim_pending_changes(
        self, consumer: str, limit: int = 100, lease: float = 30.0
    ) -> list[Change]:
        """Claim up to ``limit`` unpublished changes for ``consumer``, in seq order.

        Atomic: two relays never get the same change while its lease runs; a
        change whose lease expired (its relay died) can be claimed again. A
        change is not handed out while an earlier change of the same entity is
        leased to another relay, so each entity's changes reach the bus in
        order. The relay publishes them and then calls ``mark_published``.
        """

    @abstractmethod
    def mark_published(self, seqs: Sequence[int]) -> None:
        """Take changes out of the outbox: they are on the bus."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store can still be used (it reconnects)."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
