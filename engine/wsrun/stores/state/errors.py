"""Why a state operation was refused, as exceptions every backend and the
lifecycle rules raise (kept apart so the lifecycle model needs no store)."""

from __future__ import annotations


class StateError(Exception):
    """A state operation was refused; the message says why in one line."""


class UnknownEntity(StateError):
    """The entity does not exist and the caller did not ask to create it."""


class IllegalTransition(StateError):
    """The kind's lifecycle does not allow the change (or names no such state)."""


class StateConflict(StateError):
    """The entity is not in the state (or version) the caller expected."""
