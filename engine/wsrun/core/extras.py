"""Which optional extra each step type, backend and command needs, in one table.

``pip install wsrun`` is the core: enough for copy, tar, checksum, rsync,
deliver, conveyor, ingest and the embedded (SQLite) state store, bus, archive
and journal. The rest comes with extras (``pip install 'wsrun[s3]'``), so that a
user who wants to copy and tar does not install botocore, psycopg, Pillow, ...

Nothing in the core imports an extra's package when it is imported; a step or
backend imports it when it is used. Before that, the recipe's validation (and
so every run, dry run and ``wsrun validate``) and every backend's opener ask
this module, and a missing extra is one line that says what to install::

    s3-upload needs wsrun[s3]: pip install 'wsrun[s3]'
    postgresql:// state store needs wsrun[postgres]: pip install 'wsrun[postgres]'

The names here must match ``[project.optional-dependencies]`` in
pyproject.toml (a test compares them).
"""

from __future__ import annotations

import functools
import importlib.util
from urllib.parse import urlsplit

#: Extra -> the top-level modules it installs that wsrun imports (present when
#: the extra is installed).
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("s3fs",),
    "postgres": ("psycopg", "psycopg_pool"),
    "amqp": ("pika",),
    "web": ("starlette", "uvicorn", "multipart"),
    "images": ("PIL", "numpy", "tifffile", "imagecodecs"),
    "http": ("httpx",),
}

#: Built-in step type -> the extra it needs (step types not listed need only the core).
STEP_EXTRAS: dict[str, str] = {
    "s3-upload": "s3",
    "s3-download": "s3",
    "s3-list": "s3",
    "s3-remove": "s3",
    "image-derivative": "images",
    "http": "http",
    "archivesspace": "http",
}

#: Backend URL scheme -> the extra its backend needs (``sqlite`` and plain paths: the core).
SCHEME_EXTRAS: dict[str, str] = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "amqp": "amqp",
    "amqps": "amqp",
    "s3": "s3",
    "s3a": "s3",
}

#: What each extra adds, for ``wsrun doctor``.
PURPOSES: dict[str, str] = {
    "s3": "s3-upload, s3-download, s3-list, s3-remove; s3:// archive files",
    "postgres": "postgresql:// state store, archive, journal; wsrun db",
    "amqp": "amqp:// bus (RabbitMQ)",
    "web": "wsrun serve",
    "images": "image-derivative",
    "http": "http, archivesspace",
}


class MissingExtra(Exception):
    """Something the run needs comes with an extra that is not installed; the
    message is the one line to show."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(message(what, extra))
        self.what = what
        self.extra = extra


def message(what: str, extra: str) -> str:
    """The one line saying that ``what`` needs ``extra`` and how to install it."""
    return f"{what} needs wsrun[{extra}]: pip install 'wsrun[{extra}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def installed(extra: str) -> bool:
    """Whether every module ``extra`` brings can be imported (without importing it).
    Asked once per process: validation asks for every step that needs an extra."""
    return all(_importable(m) for m in EXTRAS[extra])


def missing_for_step(uses: str) -> str | None:
    """The extra step type ``uses`` needs and lacks, or None."""
    extra = STEP_EXTRAS.get(uses)
    return extra if extra is not None and not installed(extra) else None


def require(what: str, extra: str) -> None:
    """Raise MissingExtra unless ``extra`` is installed."""
    if not installed(extra):
        raise MissingExtra(what, extra)


def require_url(url: str, role: str) -> None:
    """Raise MissingExtra unless the backend for ``url`` is installed; ``role``
    names what the URL is for ("state store", "bus", "archive", "journal")."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    extra = SCHEME_EXTRAS.get(scheme)
    if extra is not None:
        require(f"{scheme}:// {role}", extra)


def status() -> dict[str, bool]:
    """Every extra and whether it is installed (``wsrun doctor``)."""
    return {extra: installed(extra) for extra in EXTRAS}
