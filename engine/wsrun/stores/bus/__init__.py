"""The message bus: selectors, queues, at-least-once delivery, request/reply.

A bus is chosen by URL, like the state store: ``sqlite:///path/bus.db`` (the
embedded default, shared by the processes of one machine) or
``amqp://user:password@host:5672/vhost`` (RabbitMQ, shared by many hosts).
Backends register in ``BACKENDS`` under their URL scheme.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping

from wsrun.stores.bus.base import (
    DEFAULT_LEASE,
    Bus,
    BusError,
    BusTimeout,
    Message,
    matches,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_LEASE",
    "Bus",
    "BusError",
    "BusTimeout",
    "Message",
    "bus_url",
    "matches",
    "open_bus",
]

#: The setting (and, upper-cased, the environment variable) naming the bus.
SETTING = "wsrun.bus.url"


def _sqlite(url: str) -> Bus:
    from wsrun.stores.bus.sqlite import SqliteBus

    return SqliteBus.from_url(url)


def _amqp(url: str) -> Bus:
    from wsrun.stores.bus.amqp import AmqpBus

    return AmqpBus(url)


#: URL scheme -> constructor of a bus.
BACKENDS: dict[str, Callable[[str], Bus]] = {"sqlite": _sqlite, "amqp": _amqp, "amqps": _amqp}

_open: dict[tuple[int, str], Bus] = {}
_open_lock = threading.Lock()


def bus_url(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """The bus to use: ``explicit``, else ``$WSRUN_BUS_URL``, else the setting
    ``wsrun.bus.url`` (from a profile or ``overrides``, i.e. ``--set``), else
    ``bus.db`` under ``$WSRUN_HOME``."""
    from wsrun.core.journal import default_home
    from wsrun.core.settings import configured_url

    found = configured_url(explicit, "WSRUN_BUS_URL", SETTING, env, overrides)
    if found:
        return found
    env = os.environ if env is None else env
    home = env.get("WSRUN_HOME") or default_home()
    return "sqlite:///" + os.path.abspath(os.path.join(home, "bus.db")).lstrip("/")


def open_bus(url: str | None = None) -> Bus:
    """The bus at ``url`` (default: ``bus_url()``). Buses are thread-safe and
    shared within a process, so steps may open one per use cheaply."""
    url = url or bus_url()
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise BusError(f"unknown bus URL {url!r} (known: {known})")
    from wsrun.core import extras

    try:
        extras.require_url(url, "bus")
    except extras.MissingExtra as e:
        raise BusError(str(e)) from None
    key = (os.getpid(), url)
    with _open_lock:
        bus = _open.get(key)
        if bus is None:
            bus = _open[key] = BACKENDS[scheme](url)
    return bus
