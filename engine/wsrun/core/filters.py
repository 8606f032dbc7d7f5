"""Jinja filters for paths and data, shared by templates and recipe expressions.

Recipes build paths and pass structured values between steps; these filters
keep that readable (``{{ file | basename }}``) and keep the same names
everywhere Jinja runs in wsrun.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Callable
from typing import Any


def basename(path: str | os.PathLike[str]) -> str:
    """The last component of ``path`` (``a/b.fits`` -> ``b.fits``)."""
    return os.path.basename(os.fspath(path))


def dirname(path: str | os.PathLike[str]) -> str:
    """Everything before the last component (``a/b.fits`` -> ``a``)."""
    return os.path.dirname(os.fspath(path))


def joinpath(path: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> str:
    """``path`` with ``parts`` appended: ``{{ dir | joinpath("sub", name) }}``."""
    return os.path.join(os.fspath(path), *(os.fspath(p) for p in parts))


def relpath(path: str | os.PathLike[str], start: str | os.PathLike[str]) -> str:
    """``path`` relative to ``start``; ``start`` is required so the result never
    depends on the process's current directory."""
    return os.path.relpath(os.fspath(path), os.fspath(start))


def to_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """``value`` as JSON text. Unlike Jinja's ``tojson`` it does not escape
    ``<``, ``>``, ``&`` and ``'`` for HTML, and keeps non-ASCII text readable."""
    return json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=False)


def from_json(text: str) -> Any:
    """The value a JSON text encodes (for example a command's output)."""
    return json.loads(text)


def b64encode(text: str | bytes) -> str:
    """``text`` (UTF-8) as base64, for message bodies that carry a file's text."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> str:
    """The UTF-8 text a base64 string encodes; invalid base64 is an error, not garbage."""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ValueError(f"not base64-encoded UTF-8 text: {e}") from None


def token_hex(nbytes: int) -> str:
    """A new unguessable name of ``nbytes`` random bytes as hex digits
    (``{{ 16 | token_hex }}``: 32 digits), from the operating system's secure
    source. In a recipe, use it in a var: a var is evaluated once per run, so
    every step sees the same name."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 1 <= nbytes <= 64:
        raise ValueError(f"token_hex takes a number of bytes from 1 to 64, not {nbytes!r}")
    return secrets.token_hex(nbytes)


FILTERS: dict[str, Callable[..., Any]] = {
    "basename": basename,
    "dirname": dirname,
    "joinpath": joinpath,
    "relpath": relpath,
    "to_json": to_json,
    "from_json": from_json,
    "b64encode": b64encode,
    "b64decode": b64decode,
    "token_hex": token_hex,
}
