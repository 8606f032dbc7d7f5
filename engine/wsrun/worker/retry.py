"""Whether a failed run is worth retrying: the worker's retry policy.

A message whose run failed is retried with back-off only when the failure is
transient: a service that could not be reached or timed out, an HTTP 5xx or
429 (not before its Retry-After), a wait that timed out (``wait-files``,
``wait-state``), a step that says so (``StepError`` with ``transient``:
``fail`` with ``transient: true``, ``shell`` exiting 75). Any
other failure is permanent (an unknown OUS or collection, a refused move, a
checksum mismatch): retrying cannot help, so the message is parked dead at
once with the reason. Work already claimed by another run is a duplicate: the
message is acked (``set-state`` with ``claim``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from wsrun.core.step import DuplicateWork, StepError

#: OS errors of a connection that failed or was lost.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EPIPE,
    }
)
#: How backends describe a lost service once its exception became a one-line
#: error (the bus, the state store and the journal report ``cannot connect``).
TRANSIENT_PHRASES = (
    "cannot connect",
    "connection lost",
    "connection refused",
    "no answer from",
    "server closed the connection",
    "database is locked",
)


@dataclass(frozen=True)
class Verdict:
    """``kind``: transient (retry), permanent (dead at once) or duplicate (ack)."""

    kind: str
    retry_after: float | None = None


PERMANENT = Verdict("permanent")


def classify(exc: BaseException | None) -> Verdict:
    """The verdict on a run that failed with ``exc`` (None: no exception
    known, e.g. an ``outputs:`` expression: permanent)."""
    for e in _chain(exc):
        if isinstance(e, DuplicateWork):
            return Verdict("duplicate")
    for e in _chain(exc):
        if isinstance(e, StepError) and e.transient:
            return Verdict("transient", e.retry_after)
        if isinstance(e, (TimeoutError, ConnectionError)):
            return Verdict("transient")
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return Verdict("transient")
        if any(p in str(e).lower() for p in TRANSIENT_PHRASES):
            return Verdict("transient")
    return PERMANENT


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
