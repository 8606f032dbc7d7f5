"""PostgreSQL for the scale-out backends: connections, a shared pool per URL;
and the entry points of the schema migrations of every SQL store.

The state store, the archive metadata and the run journal all live in one
PostgreSQL database when they are given ``postgresql://`` URLs. Their tables
come from each store's numbered migrations (``wsrun.core.migrate``: one
mechanism for SQLite and PostgreSQL), applied by ``wsrun db upgrade``
(``upgrade(url)``) and recorded in the ``wsrun_schema`` table. A backend calls
``require_current(url, store)`` when it opens: a database whose schema is
behind the installed wsrun is refused with one line saying to run
``wsrun db upgrade``, instead of failing later on a missing table or column.

URLs are libpq URLs (``postgresql://user:password@host:5432/db?sslmode=require``).
Query parameters libpq does not know are wsrun's own (the archive's
``?files=s3://...``) and are left out of the connection string. The tables go
into the first schema of the connection's ``search_path``; give
``?options=-csearch_path%3Dmy_schema`` to keep several wsrun installations (or
tests) apart in one database.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool


SCHEMES = ("postgresql", "postgres")
#: Connections each process keeps open per database at most.
POOL_MAX = 8
#: Seconds to wait for a connection (to connect, or for a free one in the pool).
CONNECT_TIMEOUT = 10.0


class DbError(Exception):
    """The database cannot be reached or used; the message is one line for the operator."""


class SchemaBehind(DbError):
    """The database lacks migrations this wsrun needs (``wsrun db upgrade`` applies them)."""


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database."""
    return urlsplit(url).scheme in SCHEMES


def mask(url: str) -> str:
    """``url`` with its password (if any, also in a URL inside its query such as
    ``files=s3://...``) replaced by ``****``, for logs, plans and messages."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any("://" in v for _, v in pairs):
        query = urlencode([(k, mask(v) if "://" in v else v) for k, v in pairs], safe=":/*@")
        parts = parts._replace(query=query)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:****@{host}")
    return urlunsplit(parts) if parts != urlsplit(url) else url


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    """libpq's own URL parameters (asked once: it costs ~0.1 ms, and every borrow parses)."""
    from psycopg import pq

    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The libpq connection URL and wsrun's own query parameters of ``url``."""
    if not is_postgres(url):
        raise DbError(f"{mask(url)}: not a postgresql:// URL")
    _require_driver(url)
    parts = urlsplit(url)
    known = _libpq_keywords()
    libpq, own = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in known:
            libpq.append((key, value))
        else:
            own[key] = value
    # quote, not quote_plus: libpq reads '+' literally, so options=-csearch_path%3Dx%20...
    # must keep its %20
    return urlunsplit(parts._replace(query=urlencode(libpq, quote_via=quote))), own


def conninfo(url: str) -> str:
    """The libpq connection URL of ``url`` (wsrun's own parameters removed)."""
    return split_url(url)[0]


def _require_driver(url: str) -> None:
    """DbError in one line when psycopg (the ``postgres`` extra) is not installed."""
    from wsrun.core import extras

    try:
        extras.require_url(url, "database")
    except extras.MissingExtra as e:
        raise DbError(str(e)) from None


def connect(url: str, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A new connection of its own (not from the pool), e.g. for LISTEN or a
    long advisory lock. Unreachable databases raise DbError."""
    _require_driver(url)
    import psycopg

    try:
        return psycopg.connect(
            conninfo(url), autocommit=autocommit, connect_timeout=int(CONNECT_TIMEOUT)
        )
    except psycopg.OperationalError as e:
        raise DbError(f"{mask(url)}: cannot connect: {_first_line(e)}") from None


_pools: dict[tuple[int, str], ConnectionPool] = {}
_pools_lock = threading.Lock()


def pool(url: str) -> ConnectionPool:
    """The connection pool this process shares for ``url`` (created on first use;
    a forked child gets its own). Connections are in autocommit mode: use
    ``with conn.transaction():`` for a transaction. DbError when unreachable."""
    _require_driver(url)
    from psycopg_pool import ConnectionPool

    key = (os.getpid(), conninfo(url))
    with _pools_lock:
        found = _pools.get(key)
        if found is None:
            # Connect once first: an unreachable server fails at once with its
            # own reason, instead of after the pool's wait with a generic one.
            connect(url).close()
            found = ConnectionPool(
                key[1],
                min_size=1,
                max_size=POOL_MAX,
                kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
                timeout=CONNECT_TIMEOUT,
                name=f"wsrun {mask(url)}",
                open=False,
            )
            found.open(wait=False)
            _pools[key] = found
        return found


@contextlib.contextmanager
def connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection borrowed from ``url``'s pool for the ``with`` block.
    An unreachable database (or one lost mid-way) raises DbError."""
    _require_driver(url)
    import psycopg
    from psycopg_pool import PoolTimeout

    try:
        with pool(url).connection() as conn:
            yield conn
    except PoolTimeout as e:
        raise DbError(f"{mask(url)}: cannot connect: {_first_line(e)}") from None
    except psycopg.OperationalError as e:  # the server went away, or refused us
        raise DbError(f"{mask(url)}: {_first_line(e)}") from None


#: (database, stores) whose schema this process found current (``wsrun.core.migrate``);
#: forgotten with the pools, so a test that drops a database checks it again.
checked_schemas: set[tuple[str, tuple[str, ...]]] = set()


def close_pools() -> None:
    """Close every pool of this process (at exit, and in tests)."""
    with _pools_lock:
        mine = [k for k in _pools if k[0] == os.getpid()]
        for key in mine:
            _pools.pop(key).close(timeout=1.0)
    checked_schemas.clear()


atexit.register(close_pools)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def require_schema(conn: psycopg.Connection[Any], url: str) -> None:
    """A clear error when search_path names no existing schema to create tables in."""
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise DbError(
            f"{mask(url)}: no schema on the search_path exists; create it first"
            " (CREATE SCHEMA ...) or fix the options=-csearch_path=... parameter"
        )
