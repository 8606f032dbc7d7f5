"""The message bus contract every backend follows, and selector matching.

Routing is RabbitMQ's topic exchange: a selector is a dotted name
(``pipeline.process.EU``); a queue is bound to patterns in which ``*`` stands
for exactly one word and ``#`` for zero or more words. ``publish`` puts one copy
of a message in every queue with a matching pattern. Nothing here is specific
to SQLite, so an AMQP backend can implement the same class.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wsrun.core.selectors import pattern_problem

#: Message statuses: waiting to be claimed, being handled, handled, given up on.
STATUSES = ("ready", "claimed", "done", "dead")
#: Handling attempts before a failing message is parked as dead.
DEFAULT_MAX_ATTEMPTS = 5
#: Seconds before the first retry; each later retry waits twice as long.
DEFAULT_BACKOFF = 1.0
#: Seconds a consumer holds a claimed message before others may take it.
DEFAULT_LEASE = 60.0
#: Seconds handled (``done``) messages are kept for inspection before a bus
#: removes them (7 days); ``wsrun bus purge`` removes them sooner.
DEFAULT_RETENTION = 7 * 86400.0
#: Statuses of a message still to be handled or looked at: what "unconsumed" counts.
UNCONSUMED = ("ready", "claimed", "dead")

#: Statuses ``purge`` removes; a claimed message is being handled and is left alone.
PURGEABLE = ("done", "dead", "ready")

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class BusError(Exception):
    """A bus operation failed for a reason the operator can act on."""


class BusTimeout(BusError):
    """No reply came to a ``call`` in time."""


@dataclass
class Message:
    """One copy of a published message, in one queue.

    ``queue`` is empty for a message no queue's pattern matched yet: it waits
    for the first matching queue to be declared. ``invalid`` says why the body
    is not a JSON object (a foreign publisher's bytes that are not UTF-8 or
    not JSON, an array): ``body`` is then what could be read of it, and a
    worker parks the message dead at once.
    """

    id: str
    selector: str
    body: Any
    queue: str
    attempts: int = 0
    status: str = "ready"
    error: str | None = None
    created: float = field(default_factory=time.time)
    reply_to: str | None = None
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    #: Who holds the claim and until when (epoch seconds); None when not claimed.
    consumer: str | None = None
    lease_until: float | None = None
    #: Not to be claimed before this time (a retry's back-off).
    available: float | None = None
    #: Why the body cannot be used (None: a JSON object).
    invalid: str | None = None
    #: The backend's handle on this delivery (an AMQP delivery tag), for ack/fail.
    receipt: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        # not asdict(): it would deep-copy the receipt (a live connection's handle)
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "receipt"}

    def scope(self) -> dict[str, Any]:
        """What a recipe started by this message sees as ``message``."""
        return {
            "id": self.id,
            "selector": self.selector,
            "body": self.body,
            "queue": self.queue,
            "attempts": self.attempts,
            "reply_to": self.reply_to,
            "correlation_id": self.correlation_id,
            "headers": self.headers,
            "created": self.created,
        }


def decode_body(raw: bytes | str) -> tuple[Any, str | None]:
    """A stored or received body: (the JSON object, None), or (what could be
    read of it, why it is no message body). Never raises: a poison message
    must be parked, not crash the consumer that took it."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return raw.decode(
                "utf-8", "replace"
            ), f"the body is not UTF-8 ({e.reason} at byte {e.start})"
    else:
        text = raw
    try:
        body = json.loads(text)
    except ValueError as e:
        return text, f"the body is not JSON ({e})"
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(body), "a number")
        if body is None:
            kind = "null"
        return body, f"the body is {kind}, not a JSON object"
    return body, None


def check_selector(selector: str) -> str:
    """A selector to publish to: dotted words, no wildcards, no empty word."""
    words = selector.split(".")
    if not selector or any(not w or w in ("*", "#") for w in words):
        raise BusError(
            f"invalid selector {selector!r}: dotted words such as pipeline.process.EU, no wildcards"
        )
    return selector


def check_pattern(pattern: str) -> str:
    """A pattern to bind a queue to: dotted words, ``*`` and ``#`` as whole words."""
    problem = pattern_problem(pattern)
    if problem:
        raise BusError(problem)
    return pattern


@lru_cache(maxsize=4096)
def matches(pattern: str, selector: str) -> bool:
    """Whether ``selector`` matches ``pattern``: ``*`` is one word, ``#`` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(selector.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def route(selector: str, queues: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """The queues (name, patterns) a message published to ``selector`` goes to."""
    return [name for name, patterns in queues if any(matches(p, selector) for p in patterns)]


def parse_duration(text: str | float) -> float:
    """Seconds from ``90``, ``30s``, ``10m``, ``2h``, ``1d`` or ``1w`` (for
    ``--older-than`` and a bus URL's ``retention``)."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise BusError(f"invalid duration {text!r}: a number with s, m, h, d or w, e.g. 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def mask(url: str) -> str:
    """``url`` with its password replaced by ``****``: what logs and messages show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:****@{host}"))


def check_purge_status(status: str) -> str:
    """``status`` if ``purge`` may remove messages of it."""
    if status not in PURGEABLE:
        raise BusError(f"cannot purge {status!r} messages (one of {', '.join(PURGEABLE)})")
    return status


def unconsumed(counts: dict[str, dict[str, int]]) -> int:
    """Messages waiting, in handling or dead in every queue of ``counts``
    (``Bus.counts()``), unrouted ones included: zero when all work is done."""
    return sum(n for by_status in counts.values() for s, n in by_status.items() if s in UNCONSUMED)


def retry_delay(attempts: int, backoff: float, at_least: float | None = None) -> float:
    """Seconds before retrying a message that failed its ``attempts``-th time
    (``at_least``: a Retry-After the failure asked for)."""
    return max(backoff * (2 ** max(0, attempts - 1)), at_least or 0.0)


class Bus(ABC):
    """A durable message bus with topic routing, at-least-once delivery,
    dead letters and request/reply. Backends are chosen by URL."""

    url: str = ""

    # ---- topology --------------------------------------------------------------

    @abstractmethod
    def declare_queue(self, name: str, patterns: Sequence[str]) -> None:
        """Create (or re-bind) a durable queue receiving every message whose
        selector matches one of ``patterns``; messages published earlier that
        no queue took are routed to it now."""

    @abstractmethod
    def delete_queue(self, name: str) -> None:
        """Remove a queue and the messages in it (a finished call's reply queue)."""

    @abstractmethod
    def queues(self) -> dict[str, list[str]]:
        """Every queue with its patterns."""

    # ---- sending ---------------------------------------------------------------

    @abstractmethod
    def publish(
        self,
        selector: str,
        body: dict[str, Any],
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        keep_unrouted: bool = True,
    ) -> str:
        """Put a copy of the message in every matching queue; returns the
        message id. When no queue matches, the message is kept until one is
        declared, unless ``keep_unrouted`` is False: then it is dropped (a
        notification such as a state change, which a queue declared later
        does not want: it subscribes to the changes from then on)."""

    @abstractmethod
    def send_to_queue(
        self,
        queue: str,
        selector: str,
        body: dict[str, Any],
        *,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str | None:
        """Put a message straight into one queue (a reply); None when the
        queue no longer exists (the caller gave up waiting)."""

    # ---- consuming -------------------------------------------------------------

    @abstractmethod
    def claim(self, queue: str, consumer: str, lease: float = DEFAULT_LEASE) -> Message | None:
        """Take the next ready message, atomically: two consumers never get
        the same one. A claim whose lease ran out is claimable again."""

    @abstractmethod
    def extend(self, message: Message, lease: float = DEFAULT_LEASE) -> bool:
        """Renew the lease of a message still being handled; False if lost."""

    @abstractmethod
    def ack(self, message: Message) -> None:
        """The message was handled: it is done."""

    @abstractmethod
    def fail(
        self, message: Message, error: str, *, retry: bool = True, delay: float | None = None
    ) -> str:
        """Handling failed: retry after a back-off (at least ``delay`` seconds,
        a service's Retry-After), or park as dead once the attempts are used up
        (at once when ``retry`` is False). Returns the new status, ``ready`` or
        ``dead``."""

    @abstractmethod
    def release(self, message: Message) -> None:
        """Give a claimed message back unhandled (a worker stopping), without
        counting the attempt."""

    @abstractmethod
    def wait(self, queue: str | Sequence[str], timeout: float) -> bool:
        """Block until a message may be ready in ``queue`` (or any of several),
        at most ``timeout`` seconds; False on timeout."""

    # ---- request / reply ----------------------------------------------------------

    @abstractmethod
    def call(self, selector: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Publish a request and wait for its reply's body; BusTimeout when
        none comes in ``timeout`` seconds."""

    def reply(self, message: Message, body: dict[str, Any]) -> str | None:
        """Answer a message sent with ``call``; None when it wants no reply or
        the caller stopped waiting."""
        if not message.reply_to:
            return None
        return self.send_to_queue(
            message.reply_to,
            "reply." + message.selector,
            body,
            correlation_id=message.correlation_id,
        )

    # ---- inspecting --------------------------------------------------------------

    @abstractmethod
    def messages(
        self,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Message]:
        """Messages, newest first; ``queue=""`` lists those not routed yet."""

    @abstractmethod
    def get(self, id: str) -> Message | None:
        """One message by id (or a unique prefix of it)."""

    @abstractmethod
    def resend(self, id: str) -> Message:
        """Make a dead (or done) message ready again, with its attempts reset."""

    @abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """Messages per queue and status; unrouted ones under the queue ``""``."""

    @abstractmethod
    def purge(
        self,
        status: str = "done",
        older_than: float = 0.0,
        queue: str | None = None,
    ) -> int:
        """Remove messages of ``status`` (``done``, ``dead``, or ``ready``,
        which loses work: for unrouted messages nobody will want) created
        more than ``older_than`` seconds ago, in ``queue`` or all queues
        (``""``: the unrouted ones); how many were removed."""

    def close(self) -> None:  # noqa: B027  (a backend without connections has nothing to do)
        """Release connections; the bus reconnects if used again."""
